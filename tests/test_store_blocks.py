"""The block layout's own guarantees: staged rows survive a kill, damaged blocks are found and
repaired, stale staged files are dropped, and schema-1 stores are refused and migrated."""

from __future__ import annotations

import multiprocessing
import os
import signal

import numpy as np
import pytest
import test_store_support as support
import zarr

from refusal_atlas.storage import STATUS_DONE, STATUS_FAILED, AtlasStore, StoreCorruptError, StoreSchemaError
from refusal_atlas.storage.layout import ATTRS_KEY, PER_PROMPT, ROW_DATA_NAMES, sizes_for

SPAWN = multiprocessing.get_context("spawn")


def _store(tmp_path, n: int) -> AtlasStore:
    store = AtlasStore.create_or_open(str(tmp_path / "atlas.zarr"), support.make_spec(), block_rows=support.BLOCK)
    store.register_prompts(support.records(n))
    return store


def test_rows_staged_before_a_sigkill_are_written_by_the_next_run_and_only_the_rest_is_computed(tmp_path):
    n_rows = 30
    store = _store(tmp_path, n_rows)
    reports = str(tmp_path / "staged.txt")
    stager = SPAWN.Process(target=support.stage_until_killed, args=(store.uri, reports))
    stager.start()
    support.wait_for_lines(reports, 6)
    os.kill(stager.pid, signal.SIGKILL)
    stager.join()
    reported = [int(line) for line in support.wait_for_lines(reports, 6)]
    assert store.done_rows().size == 0, "staged rows are not done until their block is written"

    # The next run's block writer gathers what was staged (the kill may land after a row's
    # file but before its report); then exactly the rest is missing.
    gathered = store.write_pending()
    done = store.done_rows().tolist()
    assert gathered["written"] == len(done) and done in (reported, reported + [len(reported)])
    ids = [r["id"] for r in support.records(n_rows)]
    missing = store.pending_rows(ids).tolist()
    assert sorted(missing + done) == list(range(n_rows))
    for row in missing:
        store.stage_row(row, support.row_values(row))
    store.write_pending()
    final = AtlasStore.open(store.uri)
    assert final.done_rows().tolist() == list(range(n_rows)) and final.staged_rows().size == 0
    for row in range(n_rows):
        support.assert_row_equals(final, row, support.row_values(row))


def test_stale_foreign_and_failed_staged_rows(tmp_path):
    store = _store(tmp_path, 8)
    store.write_row(0, support.row_values(0))
    store.stage_row(0, support.row_values(0, version=1))  # done already: a gatherer killed late
    store.stage_row(1, support.row_values(1))
    store.stage_failure(2, "the prompt is too long")
    path = tmp_path / "atlas.zarr" / "pending"
    (path / "r3.row").write_bytes(b"half a file")
    assert store.write_pending() == {"written": 1, "failed": 1, "dropped": 2}
    assert store.status()[:4].tolist() == [STATUS_DONE, STATUS_DONE, STATUS_FAILED, 0]
    assert store.errors() == {2: "the prompt is too long"} and store.staged_rows().size == 0
    support.assert_row_equals(store, 0, support.row_values(0))  # the stale file changed nothing


def test_a_damaged_block_is_named_and_repair_recomputes_it_or_registers_its_prompts_again(tmp_path):
    store = _store(tmp_path, 12)  # blocks 0, 1, 2 of 4 rows
    store.write_rows(range(12), {n: np.stack([support.row_values(r)[n] for r in range(12)]) for n in ROW_DATA_NAMES})
    path = tmp_path / "atlas.zarr"
    (path / "direction" / "c" / "0" / "0" / "0").write_bytes(b"garbage from a failing disk")
    (path / "text" / "c" / "1").write_bytes(b"more garbage")

    damaged = AtlasStore.open(store.uri)
    with pytest.raises(StoreCorruptError, match=r"'direction' chunk of block 0 \(rows 0\.\.3, first prompt 'p0000'\)"):
        damaged.read_rows([2], ("direction",))
    with pytest.raises(StoreCorruptError, match=r"'direction' chunk of block 0"):
        damaged.to_xarray()["direction"].values
    report = damaged.verify()
    assert {(d.array, d.block) for d in report.damaged} == {("direction", 0), ("text", 1)}

    repaired = AtlasStore.open(store.uri, "r+").verify(repair=True)
    assert repaired.pending == [0] and repaired.vacated == [1]
    after = AtlasStore.open(store.uri, "r+")
    assert after.verify().ok
    assert after.done_rows().tolist() == list(range(8, 12)), "block 2 is untouched and still done"
    assert after.prompt_ids().tolist()[4:8] == [""] * 4
    # The next run registers the vacated prompts again, in a new block, and computes both blocks.
    rows = after.register_prompts(support.records(12))
    assert [rows[f"p{i:04d}"] for i in range(4, 8)] == [12, 13, 14, 15]
    assert after.pending_rows(list(rows)).tolist() == [0, 1, 2, 3, 12, 13, 14, 15]


def _old_store(path, n: int) -> None:
    """A schema-1 store as the first layout wrote it: every per-prompt array one row per chunk."""
    from zarr.codecs import ZstdCodec

    spec = support.make_spec()
    root = zarr.open_group(str(path), mode="w")
    sizes = sizes_for(n, len(spec.layers), spec.hidden_size)
    for a in PER_PROMPT:
        root.create_array(a.name, shape=a.shape(sizes), chunks=a.chunks(sizes, 1), dtype=str if a.is_string else a.dtype,
                          fill_value=a.fill_value, dimension_names=a.dims, compressors=ZstdCodec(level=3))
    for k, record in enumerate(support.records(n)):
        for name in ("text", "label", "category", "source"):
            root[name][k] = record[name]
        root["prompt_id"][k] = record["id"] if k != 2 else ""  # row 2: vacant
    for k in (0, 3, 4):
        for name, values in support.row_values(k).items():
            root[name][k] = values
        root["status"][k] = STATUS_DONE
    root["error"][1], root["status"][1] = "boom", STATUS_FAILED
    root.attrs[ATTRS_KEY] = {**spec.provenance("old-uuid", 1), "schema_version": 1}
    del root.attrs[ATTRS_KEY]["block_rows"]


def test_a_schema_1_store_is_refused_with_the_migrate_command_and_migrate_copies_it(tmp_path):
    from refusal_atlas.flows.cli import main

    old, new = tmp_path / "old.zarr", tmp_path / "new.zarr"
    _old_store(old, 6)
    for opening in (lambda: AtlasStore.open(str(old)),
                    lambda: AtlasStore.create_or_open(str(old), support.make_spec())):
        with pytest.raises(StoreSchemaError, match=f"refusal-atlas migrate {old} NEW_PATH"):
            opening()
    before = sorted((p, p.stat().st_mtime_ns) for p in old.rglob("*"))
    assert main(["migrate", str(old), str(new), "--block-rows", "4"]) == 0
    assert sorted((p, p.stat().st_mtime_ns) for p in old.rglob("*")) == before, "the old store changed"

    store = AtlasStore.open(str(new))
    assert store.block_rows == 4 and store.provenance["migrated_from"]["store_uuid"] == "old-uuid"
    assert store.prompt_ids().tolist() == ["p0000", "p0001", "p0003", "p0004", "p0005"]
    assert store.done_rows().tolist() == [0, 2, 3] and store.errors() == {1: "boom"}
    for new_row, key in ((0, 0), (2, 3), (3, 4)):
        support.assert_row_equals(store, new_row, support.row_values(key))
    with pytest.raises(Exception, match="exists"):
        main(["migrate", str(old), str(new)])
