"""Damaged chunks: reads that name the block they hit, and a check that finds and repairs them.

Every per-prompt array is chunked in blocks of rows (layout.py), so a chunk that no longer
decodes (garbage from a failing disk, a truncated copy) costs one block of rows. Reads through
the store turn a decoding failure into ``StoreCorruptError`` naming the array, the block, its
rows and first prompt, and the way out. ``verify_store`` reads every chunk that matters, block by
block, and with ``repair=True`` makes the store usable again without dropping what still reads:

- a block whose data, status or error chunk is unreadable loses those chunks (deleted, so they
  read as unwritten) and has all of its rows marked pending, so the next run computes the block
  again (its prompt table is intact, so its rows keep their prompts);
- a block whose prompt-table chunk (id, text, label...) is unreadable is *vacated*: every chunk
  of the block is deleted, so its rows hold no prompt; the next run, which reads its prompt
  sources afresh, registers those prompts again (in a new block) and computes them;
- a complete group (concept vectors, a cluster run) with an unreadable chunk is removed; the next
  run writes it again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from refusal_atlas.storage.blocks import block_span
from refusal_atlas.storage.errors import StoreCorruptError
from refusal_atlas.storage.layout import (
    CLUSTERS_GROUP,
    CONCEPT_GROUP,
    PROMPT_TABLE,
    ROW_DATA_NAMES,
    STATUS_DONE,
)
from refusal_atlas.storage.rowio import run_sync

# At most this many chunk reads in flight while checking (as for writes in rowio.py).
MAX_IN_FLIGHT = 64
_TABLE = tuple(a.name for a in PROMPT_TABLE)


def recovery_hint(uri: str) -> str:
    return (f"Run `refusal-atlas inspect --repair {uri}` (or AtlasStore.open(uri, 'r+').verify(repair=True)) "
            "to mark the damaged rows for recomputation, then rerun the same command: only those rows "
            "are computed again.")


async def _read_blocks(array, blocks: Sequence[int], block_rows: int) -> tuple[dict[int, object], dict[int, str]]:
    """Read ``blocks`` of ``array`` one chunk each: (block -> values, block -> error)."""
    limit = asyncio.Semaphore(MAX_IN_FLIGHT)
    values: dict[int, object] = {}
    bad: dict[int, str] = {}
    n = array.shape[0]

    async def one(block: int) -> None:
        async with limit:
            try:
                values[block] = await array.async_array.getitem(block_span(block, block_rows, n))
            except Exception as err:  # noqa: BLE001 - any failure to decode is the finding
                bad[block] = f"{type(err).__name__}: {err}"

    await asyncio.gather(*(one(int(b)) for b in blocks))
    return values, bad


def unreadable_blocks(array, blocks: Iterable[int], block_rows: int) -> dict[int, str]:
    """block -> error, for the given blocks of a per-prompt array whose chunk does not read."""
    return run_sync(_read_blocks(array, sorted(set(blocks)), block_rows))[1]


def _prompt_of(arrays, row: int) -> str:
    try:
        return repr(str(arrays["prompt_id"][row])) or "''"
    except Exception:  # noqa: BLE001 - the id chunk may be the damaged one
        return "(its id is unreadable too)"


def locate(uri: str, arrays, names: Iterable[str], rows: Iterable[int], block_rows: int) -> StoreCorruptError | None:
    """The error naming the first unreadable (array, block) among ``rows``' blocks, or None."""
    blocks = sorted({int(r) // block_rows for r in rows})
    for name in names:
        bad = unreadable_blocks(arrays[name], blocks, block_rows)
        if bad:
            block = min(bad)
            span = block_span(block, block_rows, arrays[name].shape[0])
            more = f" ({len(bad) - 1} more blocks of it are unreadable too)" if len(bad) > 1 else ""
            return StoreCorruptError(
                f"{uri}: the {name!r} chunk of block {block} (rows {span.start}..{span.stop - 1}, first "
                f"prompt {_prompt_of(arrays, span.start)}) cannot be read, so the file is damaged: "
                f"{bad[block]}{more}. {recovery_hint(uri)}"
            )
    return None


class CheckedArray:
    """A zarr array for ``dask.array.from_array`` whose read errors name the rows they hit."""

    def __init__(self, array, uri: str, name: str, arrays, block_rows: int | None = None) -> None:
        self.array, self.uri, self.name, self.arrays = array, uri, name, arrays
        self.block_rows = block_rows
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim

    def __getitem__(self, key):
        try:
            return self.array[key]
        except Exception as err:
            first = key[0] if isinstance(key, tuple) and key else key
            if self.arrays is not None and isinstance(first, slice) and self.block_rows:
                rows = range(*first.indices(self.shape[0]))
                found = locate(self.uri, {**self.arrays, self.name: self.array}, [self.name], rows,
                               self.block_rows)
                if found is not None:
                    raise found from err
            raise StoreCorruptError(
                f"{self.uri}: the array {self.name!r} cannot be read ({type(err).__name__}: {err}). "
                f"{recovery_hint(self.uri)}"
            ) from err


@dataclass
class Damage:
    """One unreadable chunk: its array (or group) and block (None for a whole-group array)."""

    array: str
    block: int | None
    error: str


@dataclass
class VerifyReport:
    uri: str
    rows: int
    damaged: list[Damage] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)  # blocks whose rows a repair marked pending
    vacated: list[int] = field(default_factory=list)  # blocks whose prompt entries were cleared
    removed_groups: list[str] = field(default_factory=list)
    repaired: bool = False

    @property
    def ok(self) -> bool:
        return not self.damaged

    def summary(self) -> str:
        if self.ok:
            return f"verify      every chunk of the {self.rows} rows' blocks and of the complete groups reads"
        lines = [f"verify      {len(self.damaged)} unreadable chunks in {self.uri}:"]
        for damage in self.damaged[:20]:
            where = f"block {damage.block}" if damage.block is not None else "group"
            lines.append(f"  {damage.array} {where}: {damage.error[:160]}")
        if len(self.damaged) > 20:
            lines.append(f"  ... and {len(self.damaged) - 20} more")
        if self.repaired:
            lines.append(f"repaired    blocks whose rows are marked pending: {self.pending}; blocks vacated "
                         f"(their prompts are registered again by the next run): {self.vacated}; groups removed: "
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
    """Read every chunk that matters (every block's status, error and prompt table; the data of
    blocks with a done row; complete groups) and report the unreadable ones; ``repair`` mends
    them (above)."""
    arrays, n, block_rows = store._arrays, store.n_rows, store.block_rows
    report = VerifyReport(store.uri, n)
    everyone = range(-(-n // block_rows))
    bad_blocks: dict[int, set[str]] = {}
    status, unreadable_status = run_sync(_read_blocks(arrays["status"], everyone, block_rows))
    for name in ("status", "error", *_TABLE):
        bad = unreadable_status if name == "status" else unreadable_blocks(arrays[name], everyone, block_rows)
        for block, error in bad.items():
            report.damaged.append(Damage(name, block, error))
            bad_blocks.setdefault(block, set()).add(name)
    done = sorted(block for block, codes in status.items() if (codes == STATUS_DONE).any())
    for name in ROW_DATA_NAMES:
        for block, error in unreadable_blocks(arrays[name], done, block_rows).items():
            report.damaged.append(Damage(name, block, error))
            bad_blocks.setdefault(block, set()).add(name)
    groups = _group_damage(store._root)
    report.damaged.extend(damage for _, _, damage in groups)
    report.damaged.sort(key=lambda d: (d.block is None, d.block or 0, d.array))
    if repair and report.damaged:
        _repair(store, bad_blocks, groups, report)
    return report


def _repair(store, bad_blocks: dict[int, set[str]], groups, report: VerifyReport) -> None:
    """Mend what ``verify_store`` found, holding the run lock (registration must not interleave)
    and the blocks' locks (no row write of this process may interleave either)."""
    import numpy as np

    from refusal_atlas.storage.layout import PER_PROMPT

    with store.lock(60.0), store._block_locks.holding(bad_blocks):
        arrays, block_rows, n = store._arrays, store.block_rows, store.n_rows
        vacate = sorted(b for b, names in bad_blocks.items() if names & set(_TABLE))
        pending = sorted(set(bad_blocks) - set(vacate))
        # The id chunk goes first: once it is gone, no reader takes the rows for their old prompts.
        order = ["prompt_id", *(a.name for a in PER_PROMPT if a.name != "prompt_id")]
        doomed = [(arrays[name], b) for b in vacate for name in order]
        doomed += [(arrays[name], b) for b in pending for name in sorted(bad_blocks[b])]
        for array, block in doomed:
            key = array.metadata.encode_chunk_key((block, *[0] * (array.ndim - 1)))
            run_sync(store._store.delete(f"{array.path}/{key}"))
        for block in pending:
            # Status before error: a row that is pending needs no reason.
            span = block_span(block, block_rows, n)
            arrays["status"][span] = np.zeros(span.stop - span.start, dtype=np.int8)
            arrays["error"][span] = np.full(span.stop - span.start, "", dtype=object)
        if vacate:
            store._index.vacate([r for b in vacate for r in range(*block_span(b, block_rows, n).indices(n))])
        for parent, name, _damage in groups:
            if name in parent:
                del parent[name]
                report.removed_groups.append(f"{parent.path}/{name}".lstrip("/"))
        store._reconsolidate()
    report.pending, report.vacated, report.repaired = pending, vacate, True
