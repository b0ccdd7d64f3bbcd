"""The block writer: rows go to the store a whole block at a time, data first and done flags last.

Every per-prompt array is chunked in blocks of ``block_rows`` rows (layout.py), so a block is one
chunk per array. Writing some rows of a block reads the block's chunks, merges the new rows in and
writes the chunks back whole. That is safe only with one writer per block at a time: within a
process ``BlockLocks`` serialises the threads that write one block; across processes the caller
gives each block to one writer (the pipeline stages rows as they are computed and writes a block
once, from one place, when its rows are ready: pending.py).

The order that makes a row trustworthy, per block:

1. if a row being written is done now, status := pending for it first (a rewrite of a done row
   stops counting as done before any of its data changes);
2. every data chunk and the error chunk, concurrently;
3. the status chunk with the new codes, only after every write of step 2 has finished.

Chunks are replaced whole: zarr's LocalStore writes a temporary file and renames it, and object
stores replace objects whole. So a writer killed at any point leaves each chunk old or new, never
torn, and the rows of the block that were done before stay done and intact.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

import numpy as np

from refusal_atlas.storage.layout import STATUS_DONE, STATUS_PENDING

# Blocks written concurrently. Each block writes about a dozen chunks at once, so this keeps some
# tens of chunk writes (and their compression, which zarr runs in threads) in flight.
BLOCKS_IN_FLIGHT = 8


def block_ranges(rows: np.ndarray, block_rows: int) -> list[tuple[int, int, int]]:
    """Split sorted ``rows`` [n] by block: (block index, start, stop) with rows[start:stop] in it."""
    if rows.size == 0:
        return []
    blocks = rows // block_rows
    breaks = np.flatnonzero(np.diff(blocks)) + 1
    starts = np.concatenate(([0], breaks))
    stops = np.concatenate((breaks, [rows.size]))
    return [(int(blocks[a]), int(a), int(b)) for a, b in zip(starts, stops)]


def block_span(block: int, block_rows: int, n_rows: int) -> slice:
    """The rows of ``block`` that lie inside the array (the last block may be cut short)."""
    first = block * block_rows
    return slice(first, min(first + block_rows, n_rows))


async def write_block(
    arrays: Mapping[str, object],
    span: slice,
    local: np.ndarray,
    values: Mapping[str, np.ndarray],
    codes: np.ndarray,
    errors: np.ndarray,
) -> None:
    """Write rows ``span.start + local`` of one block (steps 1 to 3 above).

    ``values[name]`` is [len(local), *row shape]; ``codes`` int8 [len(local)] are the final
    status codes and ``errors`` object [len(local)] the error strings of those rows.
    """
    whole = local.size == span.stop - span.start
    status_array = arrays["status"].async_array
    status = np.asarray(await status_array.getitem(span), dtype=np.int8).copy()
    if (status[local] == STATUS_DONE).any():
        status[local] = STATUS_PENDING
        await status_array.setitem(span, status)

    async def merge(name: str, new: np.ndarray) -> None:
        array = arrays[name].async_array
        if whole:
            block = new
        else:
            # Rows of the block that are not written keep what they hold.
            block = await array.getitem(span)
            if block.dtype.kind == "T":
                block = block.astype(object)
            block[local] = new
        await array.setitem(span, block)

    await asyncio.gather(*(merge(n, v) for n, v in values.items()), merge("error", errors))
    status[local] = codes
    await status_array.setitem(span, status)


async def write_blocks_async(
    arrays: Mapping[str, object],
    block_rows: int,
    n_rows: int,
    rows: np.ndarray,
    values: Mapping[str, np.ndarray],
    codes: np.ndarray,
    errors: np.ndarray,
) -> None:
    """Write sorted, unique ``rows`` block by block, ``BLOCKS_IN_FLIGHT`` blocks at a time."""
    limit = asyncio.Semaphore(BLOCKS_IN_FLIGHT)

    async def one(block: int, a: int, b: int) -> None:
        span = block_span(block, block_rows, n_rows)
        async with limit:
            await write_block(arrays, span, rows[a:b] - span.start,
                              {n: v[a:b] for n, v in values.items()}, codes[a:b], errors[a:b])

    await asyncio.gather(*(one(*r) for r in block_ranges(rows, block_rows)))


class BlockLocks:
    """One lock per block, shared by every handle on a store in this process."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[int, threading.Lock] = {}

    @contextmanager
    def holding(self, blocks: Iterable[int]) -> Iterator[None]:
        """Hold the locks of ``blocks`` (taken in ascending order, so two callers never deadlock)."""
        with self._guard:
            locks = [self._locks.setdefault(b, threading.Lock()) for b in sorted(set(blocks))]
        taken = []
        try:
            for lock in locks:
                lock.acquire()
                taken.append(lock)
            yield
        finally:
            for lock in reversed(taken):
                lock.release()


_registry_guard = threading.Lock()
_registry: dict[tuple[str, str], BlockLocks] = {}


def block_locks(uri: str, store_uuid: str) -> BlockLocks:
    """The process-wide block locks of one store (keyed like the prompt index)."""
    with _registry_guard:
        return _registry.setdefault((uri, store_uuid), BlockLocks())
