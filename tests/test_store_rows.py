"""Prompt registration, row writes, done flags and the data version."""

from __future__ import annotations

import tempfile
import time

import numpy as np
import pytest
import test_store_support as support
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refusal_atlas.storage import STATUS_DONE, STATUS_FAILED, STATUS_PENDING, AtlasStore, PromptRecord
from refusal_atlas.storage.layout import PER_PROMPT


@pytest.fixture
def store(tmp_path) -> AtlasStore:
    return AtlasStore.create_or_open(str(tmp_path / "atlas.zarr"), support.make_spec(), block_rows=support.BLOCK)


def test_register_appends_only_new_ids_and_maps_all(store):
    first = store.register_prompts(support.records(4))
    assert first == {f"p{i:04d}": i for i in range(4)}
    again = store.register_prompts(support.records(6, start=2) + support.records(1))
    assert again == {f"p{i:04d}": i for i in [*range(2, 8), 0]}
    assert store.n_rows == 8
    assert store.row_of("p0007") == 7 and store.rows_of(["p0003", "p0001"]).tolist() == [3, 1]
    table = store.to_xarray(done_only=False)
    assert table["text"].values[5] == "prompt number 5" and table["label"].values[3] == "harmless"
    assert table["category"].values[1] == "" and table["source"].values[0] == "tests"
    assert table["text_sha256"].values[0] == PromptRecord("x", "prompt number 0").text_sha256
    with pytest.raises(KeyError, match="register_prompts"):
        store.row_of("nope")


def test_records_are_validated(store):
    with pytest.raises(ValueError, match="label"):
        store.register_prompts([{"id": "a", "text": "t", "label": "evil"}])
    with pytest.raises(ValueError, match="different texts"):
        store.register_prompts([{"id": "a", "text": "t"}, {"id": "a", "text": "u"}])
    assert store.n_rows == 0


def test_another_process_sees_rows_registered_after_it_opened(store):
    other = AtlasStore.open(store.uri, mode="r+")
    assert other.n_rows == 0
    store.register_prompts(support.records(3))
    other.write_row(other.row_of("p0002"), support.row_values(2))  # refreshes on the miss
    assert store.done_rows().tolist() == [2]


def test_write_row_then_done_fail_and_rewrite(store):
    store.register_prompts(support.records(4))
    store.write_row(0, support.row_values(0))
    store.write_rows([3, 1], {"f0": np.ones((2, 2)), "best_layer": [3, -1]})
    store.mark_failed(2, "CUDA out of memory")
    assert store.status().tolist() == [STATUS_DONE, STATUS_DONE, STATUS_FAILED, STATUS_DONE]
    assert store.errors() == {2: "CUDA out of memory"}
    assert store.pending_rows(["p0000", "p0002"]).tolist() == [2]
    assert store.pending_rows(["p0002"], retry_failed=False).tolist() == []
    store.write_row(2, support.row_values(2, version=1))
    assert store.status()[2] == STATUS_DONE and store.errors() == {}
    support.assert_row_equals(store, 2, support.row_values(2, version=1))
    assert store._arrays["best_layer"][1] == -1 and store._arrays["best_layer"][3] == 3
    got = store.read_rows([2, 0, 2], ["direction", "f0"])
    assert got["direction"].shape == (3, 2, 16) and got["f0"].shape == (3, 2)
    np.testing.assert_array_equal(got["direction"][1], support.row_values(0)["direction"])
    np.testing.assert_array_equal(got["f0"][2], support.row_values(2, version=1)["f0"])


def test_row_writes_are_checked(store):
    store.register_prompts(support.records(2))
    with pytest.raises(KeyError, match="row arrays are"):
        store.write_row(0, {"nonsense": np.zeros(2)})
    with pytest.raises(ValueError, match=r"expected \(1, 2, 16\)"):
        store.write_row(0, {"direction": np.zeros((2, 15))})
    with pytest.raises(ValueError, match="best_layer"):
        store.write_row(0, {"best_layer": 2})
    with pytest.raises(IndexError, match="register"):
        store.write_row(5, {"f0": np.zeros(2)})
    with pytest.raises(ValueError, match="twice"):
        store.write_rows([1, 1], {"f0": np.zeros((2, 2))})
    with pytest.raises(ValueError, match="reason"):
        store.mark_failed(0, "")
    assert store.status().tolist() == [STATUS_PENDING, STATUS_PENDING]


def test_data_version_follows_the_done_set(store):
    store.register_prompts(support.records(3))
    empty = store.data_version()
    store.write_row(1, support.row_values(1))
    one = store.data_version()
    assert one != empty and len(one) == 16
    store.register_prompts(support.records(1, start=10))
    assert store.data_version() == one, "registering without finishing rows changes nothing"
    store.mark_failed(1, "boom")
    assert store.data_version() == empty


def test_appending_ten_percent_leaves_every_existing_chunk_file_untouched(tmp_path):
    path = tmp_path / "atlas.zarr"
    store = AtlasStore.create_or_open(str(path), support.make_spec(), block_rows=support.BLOCK)
    store.register_prompts(support.records(42))  # the last block (rows 40 to 43) holds 2 rows
    for row in range(42):
        store.write_row(row, support.row_values(row))
    store.mark_failed(7, "failed on purpose")
    store.consolidate()
    before = support.chunk_files(path)
    # One file per block and array (11 blocks), less the error chunks that hold only '' (zarr
    # does not store a chunk that is all fill value).
    assert len(before) >= 10 * len(PER_PROMPT)
    time.sleep(0.05)  # so that a rewrite would show in the mtimes

    # 42 known + 4 new = 10% more. They start a new block (rows 44 to 47): the partly filled
    # block of rows 40 to 43 keeps its two vacant rows, so none of its chunk files changes.
    rows = store.register_prompts(support.records(46))
    assert [rows[f"p{i:04d}"] for i in range(42, 46)] == [44, 45, 46, 47]
    for row in range(44, 48):
        store.write_row(row, support.row_values(row))
    after = support.chunk_files(path)

    changed = sorted(k for k, v in before.items() if after.get(k) != v)
    assert changed == []
    assert len(after) > len(before)
    reader = AtlasStore.open(str(path))  # through the re-consolidated metadata
    assert reader.n_rows == 48 and reader.done_rows().size == 45
    assert reader.prompt_ids().tolist()[42:44] == ["", ""] and reader.status()[42:44].tolist() == [0, 0]


def test_interrupted_registration_leaves_vacant_rows_and_the_next_starts_a_new_block(store):
    store.register_prompts(support.records(3))
    # A registration killed after growing some arrays, before writing any id.
    root = zarr.open_group(store.uri, mode="r+")
    for layout in PER_PROMPT[:5]:
        root[layout.name].resize((5, *root[layout.name].shape[1:]))
    reader = AtlasStore.open(store.uri)
    assert reader.n_rows == 3, "readers see only rows every array has"
    rows = store.register_prompts(support.records(3, start=3))
    assert sorted(rows.values()) == [8, 9, 10], "after the grown rows, at the next block boundary"
    assert store.n_rows == 11 and AtlasStore.open(store.uri).prompt_ids().tolist()[3:] == [
        "", "", "", "", "", "p0003", "p0004", "p0005"]


# ----- property test ---------------------------------------------------------------------------

KEYS = st.integers(min_value=0, max_value=7)
OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("register"), st.lists(KEYS, max_size=4)),
        st.tuples(st.just("write"), KEYS, st.integers(0, 3)),
        st.tuples(st.just("write_many"), st.lists(KEYS, unique=True, min_size=1, max_size=3),
                  st.integers(0, 3)),
        st.tuples(st.just("fail"), KEYS),
    ),
    max_size=12,
)


def _id(key: int) -> str:
    return f"p{key:04d}"


@pytest.mark.integration
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPERATIONS)
def test_any_sequence_of_operations_keeps_done_rows_exactly_as_last_written(operations):
    with tempfile.TemporaryDirectory() as tmp:
        store = AtlasStore.create_or_open(f"{tmp}/atlas.zarr", support.make_spec(), block_rows=support.BLOCK)
        registered: list[int] = []
        last: dict[int, int | None] = {}  # key -> version of its last write, None if failed after
        for operation in operations:
            kind = operation[0]
            if kind == "register":
                store.register_prompts([support.records(1, start=k)[0] for k in operation[1]])
                registered += [k for k in dict.fromkeys(operation[1]) if k not in registered]
                continue
            keys = operation[1] if kind == "write_many" else [operation[1]]
            if any(k not in registered for k in keys):
                with pytest.raises(KeyError):
                    store.rows_of([_id(k) for k in keys])
                continue
            rows = store.rows_of([_id(k) for k in keys]).tolist()
            if kind == "fail":
                store.mark_failed(rows[0], f"failed {keys[0]}")
                last[keys[0]] = None
            else:
                version = operation[2]
                values = [support.row_values(k, version) for k in keys]
                store.write_rows(rows, {n: np.stack([v[n] for v in values]) for n in values[0]})
                last.update({k: version for k in keys})

        reopened = AtlasStore.open(store.uri)
        ids = reopened.prompt_ids().tolist()
        # Each registration starts a new block, so vacant rows ('') may lie between them.
        assert [i for i in ids if i] == [_id(k) for k in registered], "registration order, no duplicates"
        done = {ids[row] for row in reopened.done_rows()}
        assert done == {_id(k) for k, version in last.items() if version is not None}
        for key, version in last.items():
            row = reopened.row_of(_id(key))
            if version is None:
                assert reopened.status()[row] == STATUS_FAILED
                assert reopened.errors()[row] == f"failed {key}"
            else:
                support.assert_row_equals(reopened, row, support.row_values(key, version))
        untouched = [row for row, i in enumerate(ids) if not i or int(i[1:]) not in last]
        assert all(reopened.status()[row] == STATUS_PENDING for row in untouched)
