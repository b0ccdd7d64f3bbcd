"""Concurrent writers, killed writers and the run lock, with real processes on a real store."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import test_store_support as support

from refusal_atlas.storage import AtlasStore, StoreLockedError

SPAWN = multiprocessing.get_context("spawn")


def _new_store(tmp_path, n: int) -> tuple[str, AtlasStore]:
    uri = str(tmp_path / "atlas.zarr")
    store = AtlasStore.create_or_open(uri, support.make_spec(), block_rows=support.BLOCK)
    store.register_prompts(support.records(n))
    return uri, store


def _finish(process, timeout: float = 60) -> None:
    process.join(timeout)
    if process.is_alive():
        os.kill(process.pid, signal.SIGKILL)
        process.join()
        pytest.fail("a writer process did not finish in time")


def _run_writers(target, uri: str, workers: int, n_rows: int) -> None:
    """Start `workers` processes running target(uri, k, workers, n_rows, barrier), released
    together by a barrier, and check that every one exited cleanly."""
    barrier = SPAWN.Barrier(workers)
    processes = [SPAWN.Process(target=target, args=(uri, k, workers, n_rows, barrier)) for k in range(workers)]
    for process in processes:
        process.start()
    for process in processes:
        _finish(process)
    assert [p.exitcode for p in processes] == [0] * workers


@pytest.mark.integration
def test_four_processes_stage_interleaved_rows_and_one_block_writer_loses_none(tmp_path):
    # Every block gets rows from all four processes, as per-prompt tasks on four workers do.
    n_rows, workers = 50, 4
    uri, store = _new_store(tmp_path, n_rows)
    _run_writers(support.stage_share, uri, workers, n_rows)
    assert store.staged_rows().tolist() == list(range(n_rows)) and store.done_rows().size == 0

    assert store.write_pending() == {"written": n_rows, "failed": 0, "dropped": 0}
    reader = AtlasStore.open(uri)
    assert reader.done_rows().tolist() == list(range(n_rows)) and reader.staged_rows().size == 0
    for row in range(n_rows):
        support.assert_row_equals(reader, row, support.row_values(row))


@pytest.mark.integration
def test_four_processes_write_their_own_blocks_bitwise(tmp_path):
    n_rows, workers = 48, 4
    uri, _ = _new_store(tmp_path, n_rows)
    _run_writers(support.write_share, uri, workers, n_rows)

    store = AtlasStore.open(uri)
    assert store.done_rows().tolist() == list(range(n_rows))
    for row in range(n_rows):
        support.assert_row_equals(store, row, support.row_values(row))


def test_threads_share_one_store_object(tmp_path):
    uri, store = _new_store(tmp_path, 40)
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda row: store.write_row(row, support.row_values(row)), range(40)))
    reopened = AtlasStore.open(uri)
    assert reopened.done_rows().tolist() == list(range(40))
    for row in range(0, 40, 7):
        support.assert_row_equals(reopened, row, support.row_values(row))


def test_sigkill_mid_run_leaves_only_complete_rows_and_rerun_fills_the_rest(tmp_path):
    n_rows = 30
    uri, _ = _new_store(tmp_path, n_rows)

    # A writer going through the rows is killed at an arbitrary moment after a few rows.
    reports = str(tmp_path / "rows.txt")
    writer = SPAWN.Process(target=support.write_until_killed, args=(uri, reports))
    writer.start()
    support.wait_for_lines(reports, 6)
    os.kill(writer.pid, signal.SIGKILL)
    writer.join()
    reported = [int(line) for line in support.wait_for_lines(reports, 6)]

    # A second writer is killed after writing a row's data but before its done flag.
    half_row = n_rows - 1
    marker = str(tmp_path / "hang.txt")
    hang = SPAWN.Process(target=support.write_then_hang_before_done, args=(uri, half_row, marker))
    hang.start()
    assert support.wait_for_lines(marker, 1) == ["data written"]
    os.kill(hang.pid, signal.SIGKILL)
    hang.join()

    store = AtlasStore.open(uri, mode="r+")
    done = store.done_rows().tolist()
    # Rows finish in order, and the kill may land after a row's flag but before its report.
    assert done in (reported, reported + [len(reported)])
    for row in done:
        support.assert_row_equals(store, row, support.row_values(row))
    assert half_row not in done
    assert not np.isnan(store._arrays["direction"][half_row]).any(), "its data did land"

    # The rerun: registering again adds nothing, and exactly the missing rows are pending.
    ids = [r["id"] for r in support.records(n_rows)]
    assert store.register_prompts(support.records(n_rows)) == {i: k for k, i in enumerate(ids)}
    pending = store.pending_rows(ids)
    assert sorted(pending.tolist() + done) == list(range(n_rows))
    for row in pending:
        store.write_row(int(row), support.row_values(int(row)))

    final = AtlasStore.open(uri)
    assert final.done_rows().tolist() == list(range(n_rows))
    assert final.n_rows == n_rows
    stored_ids = final.prompt_ids().tolist()
    assert len(set(stored_ids)) == n_rows and sorted(stored_ids) == ids
    for row in range(n_rows):
        support.assert_row_equals(final, row, support.row_values(row))


def test_lock_held_by_another_process_names_the_holder(tmp_path):
    uri, store = _new_store(tmp_path, 2)
    reports = str(tmp_path / "holder.txt")
    holder = SPAWN.Process(target=support.hold_lock, args=(uri, reports))
    holder.start()
    pid = int(support.wait_for_lines(reports, 1)[0])
    try:
        with pytest.raises(StoreLockedError) as caught:
            with store.lock():
                pass
        message = str(caught.value)
        assert f"pid {pid}" in message and socket.gethostname() in message
        assert "kill" in message and "atlas.zarr.lock" in message
        with pytest.raises(StoreLockedError):
            store.register_prompts(support.records(3), lock_timeout=0.2)
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.join()
    # The kernel dropped the killed holder's lock: no stale lock to clear by hand.
    with store.lock():
        pass
    assert store.register_prompts(support.records(3))["p0002"] == support.BLOCK, "a new block"


def test_lock_is_reentrant_and_serialises_threads(tmp_path):
    uri, store = _new_store(tmp_path, 0)
    inside, overlaps = [], []

    def register(start: int) -> None:
        with store.lock(timeout=30):
            inside.append(start)
            if len(inside) > 1:
                overlaps.append(start)
            store.register_prompts(support.records(5, start))  # re-enters the lock
            inside.remove(start)

    threads = [threading.Thread(target=register, args=(k * 5,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not overlaps
    ids = AtlasStore.open(uri).prompt_ids().tolist()
    assert sorted(i for i in ids if i) == [f"p{i:04d}" for i in range(20)]
