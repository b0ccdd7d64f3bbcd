"""The store under faults: an unwritable path, a full disk (mid-run, and at any chunk write), a
damaged chunk, and two runs on one store at once.

Already covered elsewhere: a store made for another model fingerprint, a newer schema, foreign
directories (test_store_open.py); a writer killed by SIGKILL, concurrent writer processes, the run
lock (test_store_concurrency.py); any sequence of row writes (test_store_rows.py).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import robustness_support as support
import test_store_support as store_support
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zarr.storage import LocalStore

from refusal_atlas.flows.cli import main
from refusal_atlas.storage import STATUS_DONE, STATUS_FAILED, STATUS_PENDING, AtlasStore, StoreCorruptError, StoreError
from refusal_atlas.storage.lease import lease_path
from refusal_atlas.tasks.prompts.records import prompt_id


class FaultyDisk:
    """While ``installed``, zarr writes under ``root`` fail with ``code`` (ENOSPC: the disk is
    full) from the write after the first ``after`` writes whose key starts with ``counting`` (all
    keys by default); those earlier writes land."""

    def __init__(self, root: Path, after: int, counting: str = "", code: int = errno.ENOSPC) -> None:
        self.root, self.after, self.counting, self.code = str(root), after, counting, code
        self.count = 0
        self.full = False
        self.refused = 0

    @contextlib.contextmanager
    def installed(self):
        real = LocalStore.set
        disk = self

        async def set_(store, key, value):
            if not str(store.root).startswith(disk.root):
                return await real(store, key, value)
            if key.startswith(disk.counting):
                disk.full = disk.full or disk.count >= disk.after
                disk.count += 1
            if disk.full:
                disk.refused += 1
                raise OSError(disk.code, os.strerror(disk.code), f"{disk.root}/{key}")
            return await real(store, key, value)

        with mock.patch.object(LocalStore, "set", set_):
            yield self


# ----- an unwritable path ------------------------------------------------------------------------


def _tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


def test_an_unwritable_store_path_is_a_clear_error_naming_it(prefect_harness, tiny_model_dir, tmp_path, capsys):
    blocker = tmp_path / "results"
    blocker.write_text("a file where the store's parent directory should be\n")
    store = blocker / "atlas.zarr"
    with pytest.raises(StoreError, match="cannot create or write the atlas store at") as caught:
        AtlasStore.create_or_open(store, store_support.make_spec(), block_rows=store_support.BLOCK)
    assert str(blocker) in str(caught.value) and "directory you can write to" in str(caught.value)

    files = support.sources(tmp_path, 4, 2)
    before = _tree(tmp_path)
    assert main(support.flags(tiny_model_dir, store, files)) == 2
    err = capsys.readouterr().err
    assert f"refusal-atlas: cannot create or write the atlas store at {store}" in err
    assert _tree(tmp_path) == before and blocker.read_text().startswith("a file")


def test_a_store_whose_creation_fails_part_way_is_not_left_half_made(tmp_path):
    store = tmp_path / "atlas.zarr"
    denied = FaultyDisk(store, after=5, code=errno.EACCES)
    with denied.installed():  # five metadata writes land, then every write is refused
        with pytest.raises(StoreError, match=f"cannot create or write the atlas store at {store}"):
            AtlasStore.create_or_open(store, store_support.make_spec(), block_rows=store_support.BLOCK)
    assert denied.count > 5 and denied.refused >= 1, "the fault did not strike during creation"
    assert not store.exists(), "a half-made store was left behind"
    created = AtlasStore.create_or_open(store, store_support.make_spec(), block_rows=store_support.BLOCK)
    assert created.n_rows == 0 and created.store_uuid


# ----- a full disk -------------------------------------------------------------------------------


@pytest.mark.integration
def test_a_full_disk_mid_run_keeps_the_done_rows_and_the_rerun_computes_the_rest(prefect_harness, tiny_model_dir,
                                                                                  tmp_path, capsys):
    store = tmp_path / "atlas.zarr"
    # One prompt at a time, so that the disk fills between two rows: after the fifth is staged
    # (the harmful ones come first), leaving the two harmless rows to the rerun. The full disk
    # also refuses the block write, so the five rows stay staged in pending/, not lost.
    argv = support.flags(tiny_model_dir, store, support.sources(tmp_path, 5, 2), "--threads", "1", "--max-batch", "1")
    disk = FaultyDisk(store, after=5, counting="pending/r")  # every row stages one file
    with disk.installed():
        code = main(argv)
    err = capsys.readouterr().err
    assert disk.refused, "the disk never filled"
    opened = AtlasStore.open(str(store))
    staged, status = opened.staged_rows(), opened.status()
    assert code == 1 and "refusal-atlas: the disk is full" in err, err[-2000:]
    assert "keeps the 0 of its 7 rows that are done, and 5 computed rows staged" in err
    assert "rerun the same command" in err
    assert staged.size == 5, f"{staged.size} rows staged, but the disk filled after the fifth"
    assert not (status == STATUS_FAILED).any(), "a row the disk refused is pending, not failed"
    kept = {row: opened.staged(row).data["h0"] for row in staged.tolist()}
    assert all(np.isfinite(h0).all() for h0 in kept.values()), "a staged row must hold its data"

    # Space is free again: the same command writes the staged rows and computes the rest.
    assert main(argv) == 0
    counts = support.summary_counts(capsys.readouterr().out)
    assert counts["computed"] == 7 - staged.size and counts["failed"] == 0
    assert counts["cached"] + counts["stored"] == staged.size
    final = AtlasStore.open(str(store))
    assert final.done_rows().size == 7 and final.n_rows == 7 and final.staged_rows().size == 0
    for row, h0 in kept.items():
        assert np.array_equal(final.read_rows([row], ("h0",))["h0"][0], h0), "a staged row changed"


# Each write batch: rows of a fresh set (the pipeline writes a row once), as runs of one or more.
BATCHES = st.integers(1, 8).flatmap(lambda n: st.tuples(
    st.just(n), st.permutations(range(n)).flatmap(
        lambda order: st.lists(st.integers(1, 3), min_size=len(order), max_size=len(order)).map(
            lambda sizes: _split(list(order), sizes)))))


def _split(order: list[int], sizes: list[int]) -> list[list[int]]:
    batches, at = [], 0
    for size in sizes:
        if at >= len(order):
            break
        batches.append(order[at: at + size])
        at += size
    return batches


@pytest.mark.integration
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=BATCHES, fault_at=st.integers(0, 120))
def test_a_disk_that_fills_at_any_chunk_write_loses_no_finished_row(batches, fault_at):
    n_rows, order = batches
    with tempfile.TemporaryDirectory() as tmp:
        store = AtlasStore.create_or_open(f"{tmp}/atlas.zarr", store_support.make_spec(), block_rows=store_support.BLOCK)
        store.register_prompts(store_support.records(n_rows))
        finished: list[int] = []
        struck: list[int] = []
        with FaultyDisk(Path(tmp) / "atlas.zarr", after=fault_at).installed():
            for rows in order:
                values = [store_support.row_values(r) for r in rows]
                try:
                    store.write_rows(rows, {k: np.stack([v[k] for v in values]) for k in values[0]})
                except OSError as err:
                    assert err.errno == errno.ENOSPC
                    struck = rows
                    break
                finished += rows

        reopened = AtlasStore.open(store.uri)
        done = set(reopened.done_rows().tolist())
        # Every finished write is done; of the write the disk struck, a row counts only if its
        # done flag landed, which comes after all of that write's data; nothing else is done.
        assert set(finished) <= done <= set(finished) | set(struck)
        for row in done:
            store_support.assert_row_equals(reopened, row, store_support.row_values(row))
        assert not (reopened.status() == STATUS_FAILED).any()

        missing = sorted(set(range(n_rows)) - done)
        if missing:  # the disk has space again: writing what is missing completes the store
            values = [store_support.row_values(r) for r in missing]
            store.write_rows(missing, {k: np.stack([v[k] for v in values]) for k in values[0]})
        final = AtlasStore.open(store.uri)
        assert final.done_rows().tolist() == list(range(n_rows))
        for row in range(n_rows):
            store_support.assert_row_equals(final, row, store_support.row_values(row))


# ----- a damaged chunk ---------------------------------------------------------------------------


@pytest.mark.integration
def test_a_damaged_chunk_is_named_with_its_block_and_the_repaired_block_is_recomputed(prefect_harness, tiny_model_dir,
                                                                                         tmp_path, capsys):
    # All 11 rows lie in block 0. (Damaged prompt-table chunks, which vacate a block, are tested
    # on small blocks in test_store_blocks.py.)
    store = tmp_path / "atlas.zarr"
    argv = support.flags(tiny_model_dir, store, support.sources(tmp_path, 8, 3))
    assert main(argv) == 0
    capsys.readouterr()
    first = AtlasStore.open(str(store))
    bad_data = first.row_of(prompt_id(support.HARMFUL[0]))
    direction = first.read_rows([bad_data], ("direction",))["direction"]
    (store / "direction" / "c" / "0" / "0" / "0").write_bytes(b"garbage from a failing disk")

    damaged = AtlasStore.open(str(store))
    expected = r"'direction' chunk of block 0 \(rows 0\.\.10, first prompt '[0-9a-f]+'\) cannot be read"
    with pytest.raises(StoreCorruptError, match=expected) as caught:
        damaged.read_rows([bad_data], ("direction",))
    assert f"refusal-atlas inspect --repair {store}" in str(caught.value)
    with pytest.raises(StoreCorruptError, match=expected):
        damaged.to_xarray()["direction"].values  # the lazy (Dask) reads name the block too

    # A run on the damaged store stops with the same words (clustering reads the directions).
    assert main(argv) == 1
    assert "cannot be read, so the file is damaged" in capsys.readouterr().err

    assert main(["inspect", "--verify", str(store)]) == 1
    assert main(["inspect", "--repair", str(store)]) == 0
    report = capsys.readouterr().out
    assert "blocks whose rows are marked pending: [0]" in report and "blocks vacated" in report

    # The rerun computes the block's rows again.
    assert main(argv) == 0
    counts = support.summary_counts(capsys.readouterr().out)
    assert (counts["new"], counts["computed"], counts["failed"]) == (0, 11, 0)
    final = AtlasStore.open(str(store))
    ids = final.prompt_ids().tolist()
    assert final.n_rows == 11 and len(set(ids)) == 11 and final.done_rows().size == 11
    assert final.verify().ok
    again = final.read_rows([bad_data], ("direction",))["direction"]
    np.testing.assert_allclose(again, direction, rtol=1e-4, atol=1e-5)


# ----- two runs at once --------------------------------------------------------------------------

# The first run's rows wait for a gate file, so that the second run surely meets it mid-run.
GATED_RUN = """
import functools, sys, time
from pathlib import Path
from refusal_atlas.tasks.steps.prefect_tasks import extract_prompt

real, gate = extract_prompt.fn, Path(sys.argv[1])

# The task binds its parameters (and names its runs) by its function's signature: keep it.
@functools.wraps(real)
def gated(*args, **kwargs):
    deadline = time.monotonic() + 300
    while not gate.exists():
        if time.monotonic() > deadline:
            raise TimeoutError("the test never opened the gate")
        time.sleep(0.05)
    return real(*args, **kwargs)

extract_prompt.fn = gated
from refusal_atlas.flows.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _lease_holder(store: Path) -> int | None:
    try:
        return json.loads(lease_path(store).read_text() or "{}").get("pid")
    except (OSError, ValueError):
        return None


@pytest.mark.integration
def test_a_second_run_on_the_same_store_refuses_and_the_first_finishes_alone(prefect_harness, tiny_model_dir,
                                                                             tmp_path):
    from refusal_atlas.flows.atlas import refusal_atlas

    store, gate = tmp_path / "atlas.zarr", tmp_path / "gate"
    files = support.sources(tmp_path, 8, 3)
    argv = support.flags(tiny_model_dir, store, files)
    api = support.harness_api_url()
    script = tmp_path / "gated_run.py"
    script.write_text(GATED_RUN)
    first = support.Started([sys.executable, str(script), str(gate), *argv],
                            support.command_env(tmp_path / "home-1", api), tmp_path / "first.log")
    try:
        support.wait_for("the first run did not take the store's run lease", lambda: _lease_holder(store) == first.pid,
                         180, interval=0.1, on_timeout=first.output)
        second = support.run_command([str(support.CLI), *argv], support.command_env(tmp_path / "home-2", api), 180)
        assert second.returncode == 1, second.stderr[-3000:]
        assert f"refusal-atlas: another refusal-atlas run (pid {first.pid} on host" in second.stderr
        assert "registered its prompts and stops here" in second.stderr
        assert "Traceback" not in second.stderr, second.stderr[-3000:]
        gate.touch()
        assert first.wait(240, "the first run") == 0, first.output()[-4000:]
    finally:
        first.stop()

    shared = AtlasStore.open(str(store))
    ids = shared.prompt_ids().tolist()
    assert shared.n_rows == 11 and len(set(ids)) == 11, "a prompt was registered twice"
    assert shared.done_rows().size == 11

    # Each row is what a single run on its own store computes.
    alone = refusal_atlas(support.settings(tiny_model_dir, tmp_path / "alone.zarr", files))
    assert alone["extraction"]["computed"] == 11
    single = AtlasStore.open(str(tmp_path / "alone.zarr"))
    for prompt in ids:
        mine = shared.read_rows([shared.row_of(prompt)], ("h0", "direction", "f0"))
        theirs = single.read_rows([single.row_of(prompt)], ("h0", "direction", "f0"))
        for name in mine:
            np.testing.assert_allclose(mine[name], theirs[name], rtol=1e-4, atol=1e-5, err_msg=f"{prompt} {name}")
