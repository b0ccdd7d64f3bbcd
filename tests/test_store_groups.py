"""Whole-group results: clustering runs and Option 2 concept vectors, written complete-last."""

from __future__ import annotations

import numpy as np
import pytest
import test_store_support as support

from refusal_atlas.storage import AtlasStore, cluster_run_name


@pytest.fixture
def store(tmp_path) -> AtlasStore:
    store = AtlasStore.create_or_open(str(tmp_path / "atlas.zarr"), support.make_spec(), block_rows=support.BLOCK)
    store.register_prompts(support.records(6))
    for row in range(6):
        store.write_row(row, support.row_values(row))
    return store


def _run_arrays(n_members: int = 4, n_clusters: int = 2) -> dict[str, tuple]:
    rng = np.random.default_rng(0)
    return {
        "prompt_row": ("member", np.arange(n_members)),
        "labels": ("member", np.array([0, 1, -1, 0][:n_members])),
        "probabilities": ("member", rng.random(n_members)),
        "outlier_scores": ("member", rng.random(n_members)),
        "centroids": (("cluster", "hidden"), rng.standard_normal((n_clusters, 16))),
        "embedding_2d": (("member", "xy"), rng.standard_normal((n_members, 2))),
    }


def test_cluster_run_round_trip(store):
    params = {"layer": 3, "min_cluster_size": 5, "residual": True}
    name = cluster_run_name(params, store.data_version())
    assert name == cluster_run_name(dict(reversed(params.items())), store.data_version())
    assert name != cluster_run_name(params, "other-version")
    metrics = {"n_clusters": 2, "noise_fraction": 0.25}
    attrs = {"params": params, "data_version": store.data_version(), "metrics": metrics}
    store.write_cluster_run(name, _run_arrays(), attrs)

    run = AtlasStore.open(store.uri).read_cluster_run(name)
    assert AtlasStore.open(store.uri).list_cluster_runs() == [name]
    assert (run.params, run.metrics, run.attrs["complete"]) == (params, metrics, True)
    assert run["labels"].dtype == np.int32 and run["probabilities"].dtype == np.float32
    assert run.arrays["centroids"][0] == ("cluster", "hidden")
    assert run.arrays["embedding_2d"][0] == ("member", "xy")
    np.testing.assert_array_equal(run["labels"], [0, 1, -1, 0])
    assert run.to_xarray()["centroids"].dims == ("cluster", "hidden")


def test_cluster_run_that_dies_part_way_is_absent_and_can_be_rewritten(store, monkeypatch):
    import refusal_atlas.storage.clusters as clusters

    attrs = {"params": {"k": 1}, "data_version": "v1"}
    original, calls = clusters.write_named_array, []

    def fail_third(group, name, dims, values, chunks="auto"):
        calls.append(name)
        if len(calls) == 3:
            raise OSError("disk full")
        return original(group, name, dims, values, chunks)

    # The writer fails after the group and two of its arrays exist; 'complete' was never set.
    monkeypatch.setattr(clusters, "write_named_array", fail_third)
    with pytest.raises(OSError, match="disk full"):
        store.write_cluster_run("run-a", {"stale": ("member", np.zeros(4)), **_run_arrays()}, attrs)
    monkeypatch.undo()
    assert "run-a" in store._root["clusters"]
    assert store.list_cluster_runs() == []
    with pytest.raises(KeyError, match="no complete cluster run"):
        AtlasStore.open(store.uri).read_cluster_run("run-a")

    store.write_cluster_run("run-a", _run_arrays(), attrs)
    run = store.read_cluster_run("run-a")
    assert store.list_cluster_runs() == ["run-a"]
    assert "stale" not in run.arrays, "the half-written group was removed first"


def test_cluster_run_inputs_are_checked(store):
    attrs = {"params": {}, "data_version": "v"}
    with pytest.raises(ValueError, match="invalid"):
        store.write_cluster_run("../escape", _run_arrays(), attrs)
    with pytest.raises(ValueError, match="data_version"):
        store.write_cluster_run("r", _run_arrays(), {"params": {}})
    with pytest.raises(ValueError, match="dims"):
        store.write_cluster_run("r", {"labels": (("member", "x"), np.zeros(3))}, attrs)
    with pytest.raises(ValueError, match="dimension 'member'"):
        store.write_cluster_run("r", {"labels": ("member", np.zeros(3)),
                                      "prompt_row": ("member", np.zeros(4))}, attrs)
    with pytest.raises(ValueError, match="set by the store"):
        store.write_cluster_run("r", _run_arrays(), {**attrs, "complete": True})
    with pytest.raises(ValueError, match="plain JSON"):
        store.write_cluster_run("r", _run_arrays(), {**attrs, "metrics": {"x": object()}})
    assert store.list_cluster_runs() == []


def test_concept_vectors_line_up_with_store_rows(store):
    rows = [4, 1, 2]
    direction = np.random.default_rng(1).standard_normal((3, 2, 16)).astype(np.float32)
    anchor, diff = np.zeros((2, 16)), np.ones((2, 16))
    store.write_concept(rows=rows, direction=direction, anchor=anchor, diff_in_means=diff,
                        anchor_rows=[0, 3], harmful_rows=[1, 2, 4, 5],
                        data_version=store.data_version(), params={"anchor": "harmless_mean"})
    ds = AtlasStore.open(store.uri).read_concept()
    assert ds["direction"].dims == ("prompt", "layer", "hidden")
    assert ds["prompt_id"].values.tolist() == [f"p{i:04d}" for i in range(6)]
    np.testing.assert_array_equal(ds["direction"].values[[4, 1, 2]], direction)
    assert np.isnan(ds["direction"].values[[0, 3, 5]]).all()
    np.testing.assert_array_equal(ds["diff_in_means"].values, diff)
    assert ds["anchor_row"].values.tolist() == [0, 3]
    assert ds.attrs["n_anchor_rows"] == 2 and ds.attrs["n_harmful_rows"] == 4
    assert ds.attrs["data_version"] == store.data_version()
    assert store.dask_array("concept/direction").shape == (6, 2, 16)
    with pytest.raises(ValueError, match="expected"):
        store.write_concept(rows=[0], direction=direction, anchor=anchor, diff_in_means=diff,
                            anchor_rows=[], harmful_rows=[], data_version="v")
    assert AtlasStore.open(store.uri).read_concept().attrs["complete"] is True
