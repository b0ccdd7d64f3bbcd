"""Staged rows: computed but not yet in their block, one small ``.npz`` file each.

A per-prompt task that has computed its row must neither wait for the rest of its block nor
write the block itself (other tasks, maybe in other processes, compute rows of the same block at
the same time, and a block has one writer). So it *stages* the row: ``pending/r<row>.npz`` holds
the row's arrays, or the reason it failed, and the prompt id it belongs to. The file is written
whole (zarr's LocalStore writes a temporary file and renames it; an object store PUTs it), so a
run killed at any moment keeps every row staged before the kill, and the next run's block writer
gathers them before it computes anything: nothing computed is lost.

Each file is a plain ``numpy.savez`` archive: the row arrays by name (``layout.ROW_DATA``, each
of its row shape), ``_prompt_id`` and ``_error`` (0-d unicode); it is loaded without pickle.
"""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from refusal_atlas.storage.layout import PENDING_GROUP, ROW_DATA_NAMES

_KEY_RE = re.compile(r"^r(\d+)\.npz$")
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
    return f"{PENDING_GROUP}/r{int(row)}.npz"


def encode(prompt_id: str, data: Mapping[str, np.ndarray] | None = None, error: str = "") -> bytes:
    """The bytes of a staged row: ``data`` {name: one row's values} for a done row, or ``error``."""
    out = io.BytesIO()
    arrays = {name: np.asarray(values) for name, values in (data or {}).items()}
    np.savez(out, _prompt_id=np.asarray(prompt_id), _error=np.asarray(error), **arrays)
    return out.getvalue()


def decode(row: int, raw: bytes) -> StagedRow:
    """Read a staged row back; raises ``ValueError`` if the file is not a whole archive."""
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as archive:
            data = {name: archive[name] for name in archive.files if name in ROW_DATA_NAMES}
            return StagedRow(row, str(archive["_prompt_id"]), data, str(archive["_error"]))
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
