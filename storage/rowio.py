"""Row-level helpers: checking row data, runs of consecutive rows, and zarr's event loop.

Writes of row data go through the block writer (blocks.py); this module checks what is written
and writes runs of consecutive rows that begin new blocks (prompt registration, prompts.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import numpy as np

from refusal_atlas.storage.layout import BY_NAME, ROW_DATA_NAMES

# At most this many chunk-run writes in flight at once: enough to hide file or network latency
# without opening thousands of connections against an object store.
MAX_IN_FLIGHT = 64


def contiguous_runs(rows: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Split sorted, unique ``rows`` into runs of consecutive rows.

    Returns (first row, row after the last, start, stop), where [start, stop) indexes ``rows``.
    """
    if rows.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate(([0], breaks))
    stops = np.concatenate((breaks, [rows.size]))
    return [(int(rows[a]), int(rows[b - 1]) + 1, int(a), int(b)) for a, b in zip(starts, stops)]


def check_row_data(
    rows: np.ndarray, values: Mapping[str, object], sizes: Mapping[str, int], layers: Sequence[int]
) -> dict[str, np.ndarray]:
    """Validate row data ``{name: [len(rows), *row shape]}`` and cast it to the stored dtypes."""
    unknown = sorted(set(values) - set(ROW_DATA_NAMES))
    if unknown or not values:
        raise KeyError(f"cannot write {unknown or 'nothing'}; row arrays are {list(ROW_DATA_NAMES)}")
    checked = {}
    for name, given in values.items():
        layout = BY_NAME[name]
        given = np.asarray(given)
        expected = (rows.size, *layout.row_shape(sizes))
        if given.shape != expected:
            axes = ", ".join(layout.dims[1:]) or "scalar"
            raise ValueError(f"{name} has shape {given.shape}, expected {expected} ([rows, {axes}])")
        given = given.astype(layout.dtype, casting="same_kind")
        if name == "best_layer" and not np.isin(given, [*layers, -1]).all():
            raise ValueError(f"best_layer must be one of the stored layers {list(layers)} or -1")
        checked[name] = given
    return checked


def run_sync(coroutine):
    """Run a coroutine on zarr's own event loop thread (the one its synchronous API uses)."""
    from zarr.core.sync import sync

    return sync(coroutine)


async def write_runs(
    writes: Sequence[tuple[object, np.ndarray]], runs: list[tuple[int, int, int, int]]
) -> None:
    """Write ``values[start:stop]`` into ``array[first:last]`` for every array and run at once.

    ``writes`` pairs a ``zarr.Array`` with values whose leading axis follows the sorted rows.
    """
    limit = asyncio.Semaphore(MAX_IN_FLIGHT)

    async def one(array, first: int, last: int, block: np.ndarray) -> None:
        async with limit:
            await array.async_array.setitem(slice(first, last), block)

    await asyncio.gather(
        *(
            one(array, first, last, values[start:stop])
            for array, values in writes
            for first, last, start, stop in runs
        )
    )
