"""Damaged chunks: reads that name the row they hit, and a check that finds and repairs them.

Every per-prompt array holds one row per chunk, so a chunk that no longer decodes (garbage from
a failing disk, a truncated copy) costs exactly one row. Reads through the store turn a decoding
failure into ``StoreCorruptError`` naming the array, the row and its prompt, and the way out.
``verify_store`` reads every chunk that matters, one by one, and with ``repair=True`` makes the
store usable again without dropping anything that still reads:

- a row whose data, status or error chunk is unreadable is marked pending (its status and error
  chunks are rewritten), so the next run computes it again and overwrites the bad chunk;
- a row whose prompt-table chunk (id, text, label...) is unreadable is vacated: its table entries
  are cleared, so the next run, which reads its prompt sources afresh, registers the prompt again
  into that row and computes it;
- a complete group (concept vectors, a cluster run) with an unreadable chunk is removed; the next
  run writes it again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from refusal_atlas.storage.errors import StoreCorruptError
from refusal_atlas.storage.layout import (
    CLUSTERS_GROUP,
    CONCEPT_GROUP,
    PROMPT_TABLE,
    ROW_DATA_NAMES,
    STATUS_DONE,
    STATUS_PENDING,
)
from refusal_atlas.storage.rowio import run_sync

# At most this many chunk reads in flight while checking (as for writes in rowio.py).
MAX_IN_FLIGHT = 64
_TABLE = tuple(a.name for a in PROMPT_TABLE)


def recovery_hint(uri: str) -> str:
    return (f"Run `refusal-atlas inspect --repair {uri}` (or AtlasStore.open(uri, 'r+').verify(repair=True)) "
            "to mark the damaged rows for recomputation, then rerun the same command: only those rows "
            "are computed again.")


async def _read_each(array, rows: Sequence[int]) -> tuple[dict[int, object], dict[int, str]]:
    """Read ``rows`` of ``array`` (one row per chunk) chunk by chunk: (row -> value, row -> error)."""
    limit = asyncio.Semaphore(MAX_IN_FLIGHT)
    values: dict[int, object] = {}
    bad: dict[int, str] = {}

    async def one(row: int) -> None:
        async with limit:
            try:
                values[row] = (await array.async_array.getitem(slice(row, row + 1)))[0]
            except Exception as err:  # noqa: BLE001 - any failure to decode is the finding
                bad[row] = f"{type(err).__name__}: {err}"

    await asyncio.gather(*(one(int(r)) for r in rows))
    return values, bad


def unreadable_rows(array, rows: Iterable[int]) -> dict[int, str]:
    """row -> error, for the given rows of a one-row-per-chunk array whose chunk does not read."""
    return run_sync(_read_each(array, list(rows)))[1]


def _prompt_of(arrays, row: int) -> str:
    try:
        return repr(str(arrays["prompt_id"][row])) or "''"
    except Exception:  # noqa: BLE001 - the id chunk may be the damaged one
        return "(its id is unreadable too)"


def locate(uri: str, arrays, names: Iterable[str], rows: Iterable[int]) -> StoreCorruptError | None:
    """The error naming the first unreadable (array, row) among ``rows``, or None if all read."""
    rows = sorted({int(r) for r in rows})
    for name in names:
        bad = unreadable_rows(arrays[name], rows)
        if bad:
            row = min(bad)
            more = f" ({len(bad) - 1} more rows of it are unreadable too)" if len(bad) > 1 else ""
            return StoreCorruptError(
                f"{uri}: the {name!r} chunk of row {row} (prompt {_prompt_of(arrays, row)}) cannot be "
                f"read, so the file is damaged: {bad[row]}{more}. {recovery_hint(uri)}"
            )
    return None


class CheckedArray:
    """A zarr array for ``dask.array.from_array`` whose read errors name the rows they hit."""

    def __init__(self, array, uri: str, name: str, arrays) -> None:
        self.array, self.uri, self.name, self.arrays = array, uri, name, arrays
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim

    def __getitem__(self, key):
        try:
            return self.array[key]
        except Exception as err:
            first = key[0] if isinstance(key, tuple) and key else key
            if self.arrays is not None and isinstance(first, slice) and self.array.chunks[:1] == (1,):
                rows = range(*first.indices(self.shape[0]))
                found = locate(self.uri, {**self.arrays, self.name: self.array}, [self.name], rows)
                if found is not None:
                    raise found from err
            raise StoreCorruptError(
                f"{self.uri}: the array {self.name!r} cannot be read ({type(err).__name__}: {err}). "
                f"{recovery_hint(self.uri)}"
            ) from err


@dataclass
class Damage:
    """One unreadable chunk: its array (or group) and row (None for a whole-group array)."""

    array: str
    row: int | None
    error: str


@dataclass
class VerifyReport:
    uri: str
    rows: int
    damaged: list[Damage] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)  # rows marked pending by a repair
    vacated: list[int] = field(default_factory=list)  # rows whose prompt entry was cleared
    removed_groups: list[str] = field(default_factory=list)
    repaired: bool = False

    @property
    def ok(self) -> bool:
        return not self.damaged

    def summary(self) -> str:
        if self.ok:
            return f"verify      every chunk of the {self.rows} rows and of the complete groups reads"
        lines = [f"verify      {len(self.damaged)} unreadable chunks in {self.uri}:"]
        for damage in self.damaged[:20]:
            where = f"row {damage.row}" if damage.row is not None else "group"
            lines.append(f"  {damage.array} {where}: {damage.error[:160]}")
        if len(self.damaged) > 20:
            lines.append(f"  ... and {len(self.damaged) - 20} more")
        if self.repaired:
            lines.append(f"repaired    rows marked pending: {self.pending}; rows vacated (their prompt is "
                         f"registered again by the next run): {self.vacated}; groups removed: "
                         f"{self.removed_groups}. Rerun the same command to recompute them.")
        else:
            lines.append(f"            {recovery_hint(self.uri)}")
        return "\n".join(lines)


def _group_damage(root) -> list[tuple[object, str, Damage]]:
    """(parent group, name, damage) for every complete group whose arrays do not read whole."""
    from refusal_atlas.storage.groups import complete_group, complete_names

    found = []
    parents = [(root, [CONCEPT_GROUP])]
    if CLUSTERS_GROUP in root:
        parents.append((root[CLUSTERS_GROUP], complete_names(root[CLUSTERS_GROUP])))
    for parent, names in parents:
        for name in names:
            group = complete_group(parent, name)
            if group is None:
                continue
            for array_name, array in group.arrays():
                try:
                    array[...]
                except Exception as err:  # noqa: BLE001 - any failure to decode is the finding
                    path = f"{group.path}/{array_name}"
                    found.append((parent, name, Damage(path, None, f"{type(err).__name__}: {err}")))
                    break
    return found


def verify_store(store, repair: bool = False) -> VerifyReport:
    """Read every chunk that matters (each row's status, error and prompt entry; the data of
    done rows; complete groups) and report the unreadable ones; ``repair`` mends them (above)."""
    arrays = store._arrays
    n = store.n_rows
    report = VerifyReport(store.uri, n)
    everyone = range(n)
    bad_rows: dict[int, set[str]] = {}
    status, unreadable_status = run_sync(_read_each(arrays["status"], everyone))
    for name in ("status", "error", *_TABLE):
        bad = unreadable_status if name == "status" else unreadable_rows(arrays[name], everyone)
        for row, error in bad.items():
            report.damaged.append(Damage(name, row, error))
            bad_rows.setdefault(row, set()).add(name)
    done = sorted(row for row, code in status.items() if code == STATUS_DONE)
    for name in ROW_DATA_NAMES:
        for row, error in unreadable_rows(arrays[name], done).items():
            report.damaged.append(Damage(name, row, error))
            bad_rows.setdefault(row, set()).add(name)
    groups = _group_damage(store._root)
    report.damaged.extend(damage for _, _, damage in groups)
    report.damaged.sort(key=lambda d: (d.row is None, d.row or 0, d.array))
    if repair and report.damaged:
        _repair(store, bad_rows, groups, report)
    return report


def _repair(store, bad_rows: dict[int, set[str]], groups, report: VerifyReport) -> None:
    """Mend what ``verify_store`` found, holding the run lock (registration must not interleave)."""
    with store.lock(60.0):
        arrays = store._arrays
        vacate = sorted(r for r, names in bad_rows.items() if names & set(_TABLE))
        pending = sorted(bad_rows)
        for row in vacate:
            # The id goes first: once it is '', no reader takes the row for its old prompt.
            for name in ("prompt_id", *(t for t in _TABLE if t != "prompt_id")):
                arrays[name][row] = ""
        for row in pending:
            # Status before error: a row that is pending needs no reason; '' clears a bad chunk.
            arrays["status"][row] = STATUS_PENDING
            arrays["error"][row] = ""
        if vacate:
            store._index.vacate(vacate)
        for parent, name, _damage in groups:
            if name in parent:
                del parent[name]
                report.removed_groups.append(f"{parent.path}/{name}".lstrip("/"))
        store._reconsolidate()
    report.pending, report.vacated, report.repaired = pending, vacate, True
