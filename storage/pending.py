"""Staged rows: computed but not yet in their block, one small ``.row`` file each.

A per-prompt task that has computed its row must neither wait for the rest of its block nor
write the block itself (other tasks, maybe in other processes, compute rows of the same block at
the same time, and a block has one writer). So it *stages* the row: ``pending/r<row>.row`` holds
the row's arrays, or the reason it failed, and the prompt id it belongs to. The file is written
whole (zarr's LocalStore writes a temporary file and renames it; an object store PUTs it), so a
run killed at any moment keeps every row staged before the kill, and the next run's block writer
gathers them before it computes anything: nothing computed is lost.

Each file is a small JSON header line (prompt id, error, and name, dtype and shape of each row
array of ``layout.ROW_DATA``) followed by the arrays' raw bytes, in that order. Reading it is a
``json.loads`` and a ``numpy.frombuffer`` per array (a zip archive, ``numpy.savez``, cost several
times more per row), and nothing in it can unpickle.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from refusal_atlas.storage.layout import PENDING_GROUP, ROW_DATA_NAMES

_KEY_RE = re.compile(r"^r(\d+)\.row$")
# Only plain numeric dtypes are staged; anything else in a header means the file is not a row.
_DTYPES = {"float32", "float64", "int8", "int16", "int32", "int64"}
# Staged files read or deleted at once while gathering: enough to hide latency, few connections.
IN_FLIGHT = 64


@dataclass
class StagedRow:
    """One staged row: its prompt id and either its data (done) or the reason it failed."""

    row: int
    prompt_id: str
    data: dict[str, np.ndarray]
    error: str

    @property
    def failed(self) -> bool:
        return bool(self.error)


def key(row: int) -> str:
    return f"{PENDING_GROUP}/r{int(row)}.row"


def encode(prompt_id: str, data: Mapping[str, np.ndarray] | None = None, error: str = "") -> bytes:
    """The bytes of a staged row: ``data`` {name: one row's values} for a done row, or ``error``."""
    # asarray, not ascontiguousarray, which turns a 0-d value (best_layer) into shape (1,).
    arrays = [np.asarray(values) for values in (data or {}).values()]
    header = {"prompt_id": prompt_id, "error": error,
              "arrays": [[name, a.dtype.name, list(a.shape)] for name, a in zip(data or {}, arrays)]}
    return b"".join([json.dumps(header).encode() + b"\n", *(a.tobytes() for a in arrays)])


def decode(row: int, raw: bytes) -> StagedRow:
    """Read a staged row back; raises ``ValueError`` if the file is not a whole row."""
    try:
        line, _, body = raw.partition(b"\n")
        header = json.loads(line)
        data, at = {}, 0
        for name, dtype, shape in header["arrays"]:
            if name not in ROW_DATA_NAMES or dtype not in _DTYPES:
                raise ValueError(f"unexpected array {name!r} of {dtype!r}")
            size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            data[name] = np.frombuffer(body, dtype=dtype, count=size // np.dtype(dtype).itemsize,
                                       offset=at).reshape(shape)
            at += size
        if at != len(body):
            raise ValueError(f"{len(body) - at} bytes more or less than its arrays")
        return StagedRow(row, str(header["prompt_id"]), data, str(header["error"]))
    except Exception as err:  # noqa: BLE001 - a truncated or foreign file is simply not a row
        raise ValueError(f"staged row {row} does not read: {err}") from err


def _buffer(raw: bytes):
    from zarr.core.buffer import default_buffer_prototype

    return default_buffer_prototype().buffer.from_bytes(raw)


async def put(store, row: int, raw: bytes) -> None:
    await store.set(key(row), _buffer(raw))


async def get(store, row: int) -> bytes | None:
    from zarr.core.buffer import default_buffer_prototype

    found = await store.get(key(row), prototype=default_buffer_prototype())
    return None if found is None else found.to_bytes()


async def staged_rows(store) -> np.ndarray:
    """Rows with a staged file, ascending int64 [n]."""
    rows = []
    async for name in store.list_dir(PENDING_GROUP):
        match = _KEY_RE.match(name)
        if match:
            rows.append(int(match.group(1)))
    return np.asarray(sorted(rows), dtype=np.int64)


async def load_many(store, rows: np.ndarray) -> tuple[list[StagedRow], list[int]]:
    """The staged rows of ``rows`` that read, and the rows whose file is missing or unreadable."""
    limit = asyncio.Semaphore(IN_FLIGHT)
    good: list[StagedRow] = []
    bad: list[int] = []

    async def one(row: int) -> None:
        async with limit:
            raw = await get(store, row)
        try:
            if raw is None:
                raise ValueError("gone")
            good.append(decode(row, raw))
        except ValueError:
            bad.append(row)

    await asyncio.gather(*(one(int(r)) for r in rows))
    good.sort(key=lambda s: s.row)
    return good, sorted(bad)


async def delete_many(store, rows) -> None:
    limit = asyncio.Semaphore(IN_FLIGHT)

    async def one(row: int) -> None:
        async with limit:
            await store.delete(key(row))

    await asyncio.gather(*(one(int(r)) for r in rows))
