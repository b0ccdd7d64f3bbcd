"""The clustering step against a real atlas store: rows selected by label, the run written."""

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from refusal_atlas.storage import AtlasStore, StoreSpec
from refusal_atlas.tasks.clustering.geometry import ClusteringError
from refusal_atlas.tasks.clustering.store_run import cluster_store
from refusal_atlas.tasks.settings import ClusterSettings
from tests.test_cluster_support import planted

LAYERS = (1, 2)
DIM = 48


@pytest.fixture
def store(tmp_path):
    """120 harmful rows around 3 planted directions (layer 2; layer 1 holds noise), 30 harmless."""
    spec = StoreSpec(model_id="tiny", model_revision="main", model_fingerprint="fp", hidden_size=DIM,
                     num_layers=4, layers=LAYERS, method={"steps": 1})
    atlas = AtlasStore.create_or_open(str(tmp_path / "atlas.zarr"), spec)
    x, truth, _ = planted(n=150, dim=DIM, k=3, noise_share=0.0)
    labels = ["harmful"] * 120 + ["harmless"] * 30
    records = [{"id": f"p{i:03d}", "text": f"prompt {i}", "label": labels[i],
                "category": f"cat{truth[i]}" if i % 4 else "", "source": "tests"} for i in range(150)]
    rows = atlas.register_prompts(records)
    order = np.array([rows[r["id"]] for r in records])
    rng = np.random.default_rng(0)
    direction = np.stack([rng.standard_normal((150, DIM)), x], axis=1).astype(np.float32)
    data = {
        "h0": rng.standard_normal((150, 2, DIM)).astype(np.float32),
        "point": direction, "anchor": -direction, "direction": direction,
        "f0": np.zeros((150, 2), np.float32), "f_point": np.ones((150, 2), np.float32),
        "f_anchor": -np.ones((150, 2), np.float32), "effect": np.tile([0.1, 0.5], (150, 1)).astype(np.float32),
        "steps_taken": np.ones((150, 2), np.int16), "best_layer": np.full(150, 2, np.int16),
    }
    # Row 5 stays pending: it must not be clustered.
    done = np.delete(np.arange(150), 5)
    atlas.write_rows(order[done], {k: v[done] for k, v in data.items()})
    return atlas, truth


def test_cluster_store_clusters_done_harmful_rows_and_writes_the_run(store):
    atlas, truth = store
    settings = ClusterSettings(layer=2, bootstraps=2, pca_dim=16, heldout_fraction=0, null_sets=0)
    result = cluster_store(atlas, settings)
    rows = result.rows
    assert len(rows.texts) == 119 and "prompt 5" not in rows.texts
    assert all(int(t.split()[1]) < 120 for t in rows.texts)  # harmful only
    ids = [int(t.split()[1]) for t in rows.texts]
    assert adjusted_rand_score(truth[ids], result.comparison.residual.labels) > 0.95
    assert rows.effect.shape == (119, 2) and list(rows.layers) == [1, 2]
    assert result.metrics["residual"].categories.n_used == sum(1 for i in ids if i % 4)
    run = atlas.read_cluster_run(result.run_name)
    assert run.params["layer"] == 2 and set(run.metrics) == {"raw", "residual"}
    np.testing.assert_array_equal(run["labels"], result.comparison.residual.labels)
    np.testing.assert_array_equal(run["prompt_row"], rows.store_rows)
    assert run["centroids"].shape == (result.comparison.residual.n_clusters, DIM)
    assert result.run_name in atlas.list_cluster_runs()


def test_cluster_store_without_matching_rows_says_what_to_do(store):
    atlas, _ = store
    with pytest.raises(ClusteringError, match="no done prompts have a label in"):
        cluster_store(atlas, ClusterSettings(labels=[""], bootstraps=0, null_sets=0), write=False)
