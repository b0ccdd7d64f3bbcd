"""Prompt records as the store takes them, and the cached prompt id -> row lookup.

Reading the ``prompt_id`` array costs one chunk read per block, but decoding the strings still
costs per row, so the lookup is built once per process and store, kept in a module-level cache
keyed by the store's URI and UUID, and extended by reading only the rows appended since (rows are
only ever appended).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from refusal_atlas.storage.identity import text_sha256 as sha256_of
from refusal_atlas.storage.layout import LABELS, PER_PROMPT
from refusal_atlas.storage.rowio import contiguous_runs, run_sync, write_runs


@dataclass(frozen=True)
class PromptRecord:
    """One prompt to register. ``id`` is its content-hash id; ``label`` is harmful/harmless/''."""

    id: str
    text: str
    label: str = ""
    category: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"prompt id {self.id!r} must be a non-empty string")
        if not isinstance(self.text, str):
            raise ValueError(f"prompt {self.id}: text must be a string, got {type(self.text).__name__}")
        if self.label not in LABELS:
            raise ValueError(f"prompt {self.id}: label {self.label!r} is not one of {LABELS}")

    @property
    def text_sha256(self) -> str:
        return sha256_of(self.text)


def as_record(item) -> PromptRecord:
    """Accept a ``PromptRecord``, a mapping or any object with the same fields.

    The id may be called ``id`` or ``prompt_id``; a missing or None label/category/source is ''.
    """
    if isinstance(item, PromptRecord):
        return item

    def get(*names: str):
        for name in names:
            value = item.get(name) if isinstance(item, Mapping) else getattr(item, name, None)
            if value is not None:
                return value
        return None

    return PromptRecord(
        id=get("id", "prompt_id"),
        text=get("text"),
        label=get("label") or "",
        category=get("category") or "",
        source=get("source") or "",
    )


def unique_records(records: Iterable) -> list[PromptRecord]:
    """Records in first-seen order without repeats; the same id with two texts is an error."""
    seen: dict[str, PromptRecord] = {}
    for item in records:
        record = as_record(item)
        earlier = seen.get(record.id)
        if earlier is None:
            seen[record.id] = record
        elif earlier.text != record.text:
            raise ValueError(
                f"prompt id {record.id} is given twice with different texts; ids must be "
                "content hashes of the text"
            )
    return list(seen.values())


class PromptIndex:
    """prompt id -> row, for rows ``[0, n_read)`` of the ``prompt_id`` array.

    Rows whose id is '' are *vacant*: the rest of a block that a registration did not fill, rows
    that a registration in progress (or one that was interrupted) has grown but not yet named, and
    rows that a repair vacated. They are re-read on a miss (another process may be registering
    into them right now) but never handed out again: new prompts always start a new block.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.rows: dict[str, int] = {}
        self.ids: dict[int, str] = {}  # the reverse lookup, row -> id
        self.vacant: list[int] = []
        self.n_read = 0

    def update(self, prompt_id_array, n_rows: int, recheck_vacant: bool = False) -> None:
        """Read the ids of rows ``[n_read, n_rows)``; with ``recheck_vacant``, re-read the
        vacant rows too (another process may have filled them since)."""
        with self.lock:
            if recheck_vacant and self.vacant:
                vacant = np.asarray(self.vacant, dtype=np.int64)
                ids = prompt_id_array.get_orthogonal_selection((vacant,)).tolist()
                self._take(vacant.tolist(), ids)
            if n_rows > self.n_read:
                ids = prompt_id_array[self.n_read : n_rows].tolist()
                self._take(list(range(self.n_read, n_rows)), ids, self.vacant)
                self.n_read = n_rows

    def _take(self, rows: list[int], ids: list[str], keep: list[int] | None = None) -> None:
        """Index ``rows`` by ``ids``; rows with no id yet are vacant (after those in ``keep``)."""
        vacant = list(keep or [])
        for row, prompt_id in zip(rows, ids):
            if prompt_id:
                self.rows[prompt_id] = row
                self.ids[row] = prompt_id
            else:
                vacant.append(row)
        self.vacant = vacant

    def assign(self, count: int, n_rows: int, block_rows: int) -> tuple[list[int], int]:
        """Rows for ``count`` new prompts, from the first block boundary at or after ``n_rows``.

        New prompts never go into a block that already has rows (not even vacant ones: filling
        them would rewrite that block's chunks, which appends must leave untouched). Returns
        (rows, new row count).
        """
        start = -(-n_rows // block_rows) * block_rows
        return list(range(start, start + count)), start + count

    def vacate(self, rows: list[int]) -> None:
        """Forget the ids of ``rows`` (cleared in the store) and offer the rows to the next
        registration, as if an interrupted registration had left them."""
        with self.lock:
            gone = set(rows)
            self.rows = {i: r for i, r in self.rows.items() if r not in gone}
            self.ids = {r: i for i, r in self.rows.items()}
            self.vacant = sorted(set(self.vacant) | {r for r in gone if r < self.n_read})

    def add(self, ids: list[str], rows: list[int], n_rows: int) -> None:
        """Record a finished registration (the results of ``assign``); rows skipped before it
        (the rest of the last block, or rows grown by an interrupted registration) are vacant."""
        with self.lock:
            skipped = range(self.n_read, rows[0] if rows else n_rows)
            self.vacant = sorted(set(self.vacant) | set(skipped))
            self.rows.update(zip(ids, rows))
            self.ids.update(zip(rows, ids))
            self.n_read = n_rows


def append_prompts(arrays: Mapping[str, object], index: PromptIndex, new: list[PromptRecord],
                   block_rows: int) -> None:
    """Give ``new`` (records not in ``index``) rows in new blocks and write their table entries.

    Caller holds the run lock. Order: grow every per-prompt array with one resize each (only
    metadata is written; no existing chunk is touched), write the table columns of the new rows,
    write their ids last (a row is registered once its id is there), then update the index.
    """
    n_max = max(arrays[a.name].shape[0] for a in PER_PROMPT)
    rows, n_new = index.assign(len(new), n_max, block_rows)
    growing = [arrays[a.name] for a in PER_PROMPT if arrays[a.name].shape[0] < n_new]

    async def resize_all() -> None:
        await asyncio.gather(*(a.async_array.resize((n_new, *a.shape[1:])) for a in growing))

    run_sync(resize_all())
    order = np.argsort(rows)
    rows = np.asarray(rows, dtype=np.int64)[order]
    new = [new[i] for i in order]
    columns = {
        "text": [r.text for r in new],
        "text_sha256": [r.text_sha256 for r in new],
        "label": [r.label for r in new],
        "category": [r.category for r in new],
        "source": [r.source for r in new],
    }
    runs = contiguous_runs(rows)
    run_sync(write_runs([(arrays[k], np.asarray(v, dtype=object)) for k, v in columns.items()], runs))
    ids = [r.id for r in new]
    run_sync(write_runs([(arrays["prompt_id"], np.asarray(ids, dtype=object))], runs))
    index.add(ids, rows.tolist(), n_new)


_cache_guard = threading.Lock()
_indexes: dict[tuple[str, str], PromptIndex] = {}


def shared_index(uri: str, store_uuid: str) -> PromptIndex:
    """The process-wide index of one store (the UUID keeps a recreated store from reusing it)."""
    with _cache_guard:
        return _indexes.setdefault((uri, store_uuid), PromptIndex())
