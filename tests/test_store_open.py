"""Creating and reopening stores: provenance, the mismatch errors, layout, foreign readers."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import dask.array as da
import numpy as np
import pytest
import test_store_support as support
import xarray as xr
import zarr

from refusal_atlas.storage import AtlasStore, StoreError, StoreMismatchError, StoreSchemaError, validate_name
from refusal_atlas.storage.layout import ATTRS_KEY, PER_PROMPT, SCHEMA_VERSION


def _path(tmp_path) -> str:
    return str(tmp_path / "atlas.zarr")


def test_provenance_attributes_are_plain_json(tmp_path):
    store = AtlasStore.create_or_open(_path(tmp_path), support.make_spec(), block_rows=support.BLOCK)
    with open(tmp_path / "atlas.zarr" / "zarr.json") as f:
        attrs = json.load(f)["attributes"][ATTRS_KEY]
    assert attrs["schema_version"] == SCHEMA_VERSION
    assert str(uuid.UUID(attrs["store_uuid"])) == attrs["store_uuid"] == store.store_uuid
    assert attrs["created"].endswith("+00:00")
    assert attrs["model"] == {"id": "tiny/model", "revision": "main", "fingerprint": "fp-aaaa"}
    assert (attrs["hidden_size"], attrs["num_layers"], attrs["layers"]) == (16, 4, [1, 3])
    assert attrs["position"] == "last_prompt_token"
    assert attrs["method"]["phrases"] == ["I cannot", "I'm sorry"]
    assert {"zarr", "numpy", "tests"} <= set(attrs["packages"])
    assert store.layers.tolist() == [1, 3]


def test_reopening_with_the_same_spec_keeps_the_store(tmp_path):
    first = AtlasStore.create_or_open(_path(tmp_path), support.make_spec(), block_rows=support.BLOCK)
    first.register_prompts(support.records(3))
    again = AtlasStore.create_or_open(_path(tmp_path), support.make_spec(), block_rows=support.BLOCK)
    assert again.store_uuid == first.store_uuid and again.n_rows == 3


def test_different_fingerprint_is_an_error_naming_both(tmp_path):
    AtlasStore.create_or_open(_path(tmp_path), support.make_spec(), block_rows=support.BLOCK)
    with pytest.raises(StoreMismatchError) as caught:
        AtlasStore.create_or_open(_path(tmp_path), support.make_spec(model_fingerprint="fp-bbbb"))
    message = str(caught.value)
    assert "fp-aaaa" in message and "fp-bbbb" in message
    assert "new store path" in message and "same model" in message


def test_newer_schema_version_says_to_upgrade(tmp_path):
    store = AtlasStore.create_or_open(_path(tmp_path), support.make_spec(), block_rows=support.BLOCK)
    root = zarr.open_group(_path(tmp_path), mode="r+")
    root.attrs[ATTRS_KEY] = {**store.provenance, "schema_version": SCHEMA_VERSION + 1}
    for opener in (lambda: AtlasStore.open(_path(tmp_path)),
                   lambda: AtlasStore.create_or_open(_path(tmp_path), support.make_spec(), block_rows=support.BLOCK)):
        with pytest.raises(StoreSchemaError) as caught:
            opener()
        message = str(caught.value)
        assert f"schema_version {SCHEMA_VERSION + 1}" in message and "upgrade refusal-atlas" in message


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"position": "last_instruction_token"}, ["position convention", "last_instruction_token"]),
        ({"layers": (1, 2)}, ["layers", "[1, 2]"]),
        ({"method": {"steps": 3, "eta": 0.05, "phrases": ["I cannot", "I'm sorry"]}},
         ["method parameters", "silently mixed", '"steps":3']),
    ],
)
def test_other_settings_are_errors_that_say_what_differs(tmp_path, change, words):
    AtlasStore.create_or_open(_path(tmp_path), support.make_spec(), block_rows=support.BLOCK)
    with pytest.raises(StoreMismatchError) as caught:
        AtlasStore.create_or_open(_path(tmp_path), support.make_spec(**change))
    for word in [*words, "new store path"]:
        assert word in str(caught.value)


def test_method_key_order_does_not_matter(tmp_path):
    AtlasStore.create_or_open(_path(tmp_path), support.make_spec(method={"a": 1, "b": [1, 2]}))
    AtlasStore.create_or_open(_path(tmp_path), support.make_spec(method={"b": (1, 2), "a": 1}))


def test_foreign_directories_and_missing_stores_are_refused(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(StoreSchemaError, match="not a refusal-atlas store"):
        AtlasStore.create_or_open(str(tmp_path / "other"), support.make_spec(), block_rows=support.BLOCK)
    with pytest.raises(FileNotFoundError, match="create_or_open"):
        AtlasStore.open(str(tmp_path / "absent.zarr"))
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w").attrs["x"] = 1
    with pytest.raises(StoreSchemaError, match="not a refusal-atlas store"):
        AtlasStore.open(str(tmp_path / "plain.zarr"))


def test_read_only_store_refuses_writes(tmp_path):
    AtlasStore.create_or_open(_path(tmp_path), support.make_spec(), block_rows=support.BLOCK).register_prompts(support.records(1))
    reader = AtlasStore.open(_path(tmp_path))
    with pytest.raises(StoreError, match="mode='r\\+'"):
        reader.write_row(0, support.row_values(0))


def test_every_array_has_dimension_names(tmp_path):
    store = AtlasStore.create_or_open(_path(tmp_path), support.make_spec(), block_rows=support.BLOCK)
    store.register_prompts(support.records(2))
    store.write_cluster_run("r", {"labels": ("member", [0, 1])}, {"params": {}, "data_version": "v"})
    root = zarr.open_group(_path(tmp_path), mode="r")
    arrays = list(root.arrays()) + list(root["clusters/r"].arrays())
    assert len(arrays) == len(PER_PROMPT) + 2
    for name, array in arrays:
        assert array.metadata.dimension_names is not None, name
        assert len(array.metadata.dimension_names) == array.ndim, name
        assert array.metadata.zarr_format == 3
        if name in {a.name for a in PER_PROMPT}:
            assert array.chunks[0] == support.BLOCK and array.shards is None, name


def test_xarray_open_zarr_and_dask_from_zarr_read_dimension_names(tmp_path):
    path = _path(tmp_path)
    store = AtlasStore.create_or_open(path, support.make_spec(), block_rows=support.BLOCK)
    store.register_prompts(support.records(5))
    store.write_row(2, support.row_values(2))
    store.consolidate()

    ds = xr.open_zarr(path)
    assert ds["direction"].dims == ("prompt", "layer", "hidden")
    assert ds["f0"].dims == ("prompt", "layer") and ds["best_layer"].dims == ("prompt",)
    assert "prompt_id" in ds.coords and ds["layer"].values.tolist() == [1, 3]
    assert str(ds["prompt_id"].values[2]) == "p0002"
    np.testing.assert_array_equal(ds["direction"].values[2], support.row_values(2)["direction"])
    assert np.isnan(ds["direction"].values[0]).all(), "unwritten rows read as NaN"

    lazy = da.from_zarr(path, component="direction")
    assert lazy.shape == (5, 2, 16) and lazy.chunksize == (support.BLOCK, 2, 16)
    assert zarr.open_array(path, path="direction").metadata.dimension_names == (
        "prompt", "layer", "hidden")

    # The store's own read API: done rows only, with prompt ids and model layers as coordinates.
    mine = store.to_xarray()
    assert mine["direction"].dims == ("prompt", "layer", "hidden")
    assert mine["prompt_id"].values.tolist() == ["p0002"] and mine["prompt"].values.tolist() == [2]
    assert mine["label"].values.tolist() == ["harmful"]
    assert store.dask_array("direction").shape == (1, 2, 16)
    assert store.dask_array("direction", done_only=False).shape == (5, 2, 16)
    assert store.to_xarray(done_only=False).sizes["prompt"] == 5


def test_memory_url_store_round_trip():
    uri = f"memory://atlas-{uuid.uuid4().hex}.zarr"
    store = AtlasStore.create_or_open(uri, support.make_spec(), block_rows=support.BLOCK)
    rows = store.register_prompts(support.records(4))
    store.write_rows([rows["p0001"], rows["p0003"]],
                     {"direction": np.stack([support.row_values(k)["direction"] for k in (1, 3)])})
    store.consolidate()
    reader = AtlasStore.open(uri)
    assert reader.done_rows().tolist() == [1, 3]
    np.testing.assert_array_equal(reader.to_xarray()["direction"].values[1],
                                  support.row_values(3)["direction"])
    with reader.lock():  # only an in-process lock on remote URLs, but it must work
        pass
    store.write_cluster_run("r1", {"labels": ("member", [0, 1])}, {"params": {}, "data_version": "v"})
    store.write_cluster_run("r1", {"labels": ("member", [1, 1])}, {"params": {}, "data_version": "v"})
    assert AtlasStore.open(uri).list_cluster_runs() == ["r1"]
    assert AtlasStore.open(uri).read_cluster_run("r1")["labels"].tolist() == [1, 1]
    assert xr.open_zarr(uri)["direction"].dims == ("prompt", "layer", "hidden")


def test_names_are_validated():
    for good in ("run-1", "a.b_c", "X"):
        assert validate_name(good) == good
    for bad in ("", ".", "..", "../x", "a/b", "a b", "é"):
        with pytest.raises(ValueError, match="invalid"):
            validate_name(bad)


def test_storage_imports_no_torch_prefect_tasks_or_flows():
    code = (
        "import sys, refusal_atlas.storage, refusal_atlas.storage.read; "
        "names = {'.'.join(m.split('.')[:2]) if m.startswith('refusal_atlas.') else m.split('.')[0] for m in sys.modules}; "
        "bad = sorted(names & {'torch', 'prefect', 'refusal_atlas.tasks', 'refusal_atlas.flows'}); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
