"""Shared helpers of the storage tests: a small spec, prompt records, deterministic row data,
and the bodies of writer processes (spawned processes import them from this module)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import numpy as np

from refusal_atlas.storage import AtlasStore, StoreSpec
from refusal_atlas.storage.layout import ROW_DATA, sizes_for

LAYERS = (1, 3)
HIDDEN = 16
# Rows per block in the test stores: small, so that a few rows already span several blocks.
BLOCK = 4


def make_spec(**overrides) -> StoreSpec:
    """A store spec for a made-up 4-layer model of hidden size 16, storing layers 1 and 3."""
    fields = dict(
        model_id="tiny/model",
        model_revision="main",
        model_fingerprint="fp-aaaa",
        hidden_size=HIDDEN,
        num_layers=4,
        layers=LAYERS,
        position="last_prompt_token",
        method={"steps": 2, "eta": 0.05, "phrases": ["I cannot", "I'm sorry"]},
        packages={"tests": "1"},
    )
    fields.update(overrides)
    return StoreSpec(**fields)


def records(n: int, start: int = 0) -> list[dict]:
    """``n`` prompt records with ids p0000, p0001, ...; every third harmless, others harmful."""
    return [
        {
            "id": f"p{i:04d}",
            "text": f"prompt number {i}",
            "label": "harmless" if i % 3 == 0 else "harmful",
            "category": "" if i % 2 else f"cat{i % 5}",
            "source": "tests",
        }
        for i in range(start, start + n)
    ]


def row_values(key: int, version: int = 0) -> dict[str, np.ndarray]:
    """Deterministic data for one row, different for every (key, version); no fill values."""
    rng = np.random.default_rng([key, version])
    sizes = sizes_for(1, len(LAYERS), HIDDEN)
    out = {}
    for layout in ROW_DATA:
        shape = layout.row_shape(sizes)
        if layout.name == "best_layer":
            out[layout.name] = np.int16(LAYERS[(key + version) % len(LAYERS)])
        elif layout.dtype == "int16":
            out[layout.name] = rng.integers(0, 50, size=shape).astype(np.int16)
        else:
            out[layout.name] = rng.standard_normal(shape).astype(np.float32)
    return out


def assert_row_equals(store: AtlasStore, row: int, expected: dict[str, np.ndarray]) -> None:
    """Every array of ``row`` is bitwise what was written (compared as raw bytes)."""
    for name, values in expected.items():
        stored = store._arrays[name][row]
        assert np.asarray(stored).tobytes() == np.asarray(values).tobytes(), (row, name)


def chunk_files(store_path: Path) -> dict[str, tuple[int, str]]:
    """Every chunk file of a local store: relative path -> (mtime_ns, sha256 of the bytes)."""
    import hashlib

    out = {}
    for path in store_path.rglob("*"):
        if path.is_file() and "/c/" in path.as_posix():
            stat = path.stat()
            out[path.relative_to(store_path).as_posix()] = (
                stat.st_mtime_ns,
                hashlib.sha256(path.read_bytes()).hexdigest(),
            )
    return out


# ----- bodies of spawned writer processes ------------------------------------------------------
# They report through a file of lines, not a multiprocessing queue: a process killed while
# putting to a queue can leave it corrupted for the reader.


def report(path: str, text: object) -> None:
    """Append one line to ``path`` with a single write, so a kill never leaves half a line."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, f"{text}\n".encode())
    finally:
        os.close(fd)


def wait_for_lines(path: str, n: int, timeout: float = 60.0) -> list[str]:
    """Wait until ``path`` holds at least ``n`` lines; return them all."""
    deadline = time.monotonic() + timeout
    while True:
        lines = Path(path).read_text().splitlines() if os.path.exists(path) else []
        if len(lines) >= n:
            return lines
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} has {len(lines)} lines after {timeout} s, expected {n}")
        time.sleep(0.01)


def write_share(uri: str, worker: int, workers: int, n_rows: int, barrier) -> None:
    """Write the rows of blocks worker, worker + workers, ... (a block has one writer process)."""
    store = AtlasStore.open(uri, mode="r+")
    barrier.wait(timeout=60)
    mine = [row for row in range(n_rows) if (row // store.block_rows) % workers == worker]
    for row in mine[:-2]:
        store.write_row(row, row_values(row))
    # The last two rows go through the batched path.
    last = mine[-2:]
    batch = [row_values(row) for row in last]
    store.write_rows(last, {k: np.stack([b[k] for b in batch]) for k in batch[0]})


def stage_share(uri: str, worker: int, workers: int, n_rows: int, barrier) -> None:
    """Stage rows worker, worker + workers, ...: every block gets rows from every worker, as
    per-prompt tasks in several processes stage them."""
    store = AtlasStore.open(uri, mode="r+")
    barrier.wait(timeout=60)
    for row in range(worker, n_rows, workers):
        store.stage_row(row, row_values(row))


def write_until_killed(uri: str, reports: str) -> None:
    """Write rows 0, 1, 2, ... by prompt id, reporting each finished row, until killed."""
    store = AtlasStore.open(uri, mode="r+")
    ids = store.prompt_ids()
    for row, prompt_id in enumerate(ids):
        store.write_row(store.row_of(prompt_id), row_values(row))
        report(reports, row)
        time.sleep(0.02)


def stage_until_killed(uri: str, reports: str) -> None:
    """Stage rows 0, 1, 2, ... as per-prompt tasks do, reporting each staged row, until killed."""
    store = AtlasStore.open(uri, mode="r+")
    for row in range(store.n_rows):
        store.stage_row(row, row_values(row))
        report(reports, row)
        time.sleep(0.02)


def write_then_hang_before_done(uri: str, row: int, reports: str) -> None:
    """Write ``row``'s data through the real path, then hang where the done flag would be set."""
    from zarr.core.array import AsyncArray

    from refusal_atlas.storage import STATUS_DONE

    original = AsyncArray.setitem
    store = AtlasStore.open(uri, mode="r+")
    first = (row // store.block_rows) * store.block_rows

    async def hang_at_done(array, selection, value, *args, **kwargs):
        if array.path == "status" and np.asarray(value)[row - first] == STATUS_DONE:
            report(reports, "data written")
            await asyncio.sleep(3600)
        return await original(array, selection, value, *args, **kwargs)

    AsyncArray.setitem = hang_at_done
    store.write_row(row, row_values(row))


def hold_lock(uri: str, reports: str) -> None:
    """Take the store's run lock, report the pid, and keep it until killed."""
    store = AtlasStore.open(uri, mode="r+")
    with store.lock():
        report(reports, os.getpid())
        time.sleep(3600)
