"""The vector each cluster is evaluated through, and the controls built the same way.

Synthetic h_0 with a planted answer: every harmful row is the harmless mean plus its cluster's
offset, a shared offset and noise; each row's Option 1 direction is a random unit vector, so only
the difference in means can find the offsets. The real store path is checked in
tests/test_flow_verdict.py.
"""

from types import SimpleNamespace

import numpy as np
import pytest

from refusal_atlas.tasks.evaluation.controls import Candidate, subset_candidates
from refusal_atlas.tasks.steps.cluster_vectors import cluster_vectors, harmless_means, row_mean

D, LAYERS = 24, [3, 5]


class FakeStore:
    """read_rows and layers over in-memory arrays [rows, L, D], as AtlasStore gives them."""

    layers = LAYERS

    def __init__(self, arrays):
        self.arrays = arrays

    def read_rows(self, rows, names):
        return {n: self.arrays[n][np.asarray(rows)] for n in names}


@pytest.fixture(scope="module")
def planted():
    rng = np.random.default_rng(0)
    offsets = 4.0 * np.linalg.qr(rng.standard_normal((D, 3)))[0].T  # [3, D], orthogonal
    shared = 2.0 * rng.standard_normal(D)
    mu = rng.standard_normal((len(LAYERS), D))  # the harmless mean at each stored layer
    labels = np.repeat([0, 1, 2, -1], [10, 12, 8, 3])
    n = labels.size
    h0 = mu + 0.3 * rng.standard_normal((n, len(LAYERS), D))
    h0 += (shared + np.vstack([offsets, np.zeros((1, D))])[labels])[:, None, :]
    harmless = mu + 0.3 * rng.standard_normal((40, len(LAYERS), D))
    direction = rng.standard_normal((n, len(LAYERS), D))
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    store = FakeStore({"h0": h0, "direction": direction})
    result = SimpleNamespace(labels=labels, n_clusters=3, directions=np.eye(3, D))
    comparison = SimpleNamespace(result=result, row_layer=np.full(n, 5), common=np.eye(1, D)[0])
    clustering = SimpleNamespace(comparison=comparison, rows=SimpleNamespace(store_rows=np.arange(n)))
    means = {5: harmless[:, 1].mean(axis=0)}
    return SimpleNamespace(store=store, clustering=clustering, means=means, offsets=offsets, shared=shared,
                           h0=h0, labels=labels)


def _cos(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_difference_in_means_recovers_each_planted_offset(planted):
    v = cluster_vectors("diff_in_means", planted.store, planted.clustering, planted.means)
    assert v.directions.shape == (3, D) and not v.unit_pool
    np.testing.assert_allclose(np.linalg.norm(v.directions, axis=1), 1.0)
    for k in range(3):
        assert _cos(v.directions[k], planted.offsets[k] + planted.shared) > 0.99
    # The common direction is every clustered row's shift, noise included, so the shared part leads.
    assert _cos(v.common, planted.shared + planted.offsets.sum(axis=0) * 10 / 33) > 0.95
    np.testing.assert_allclose(v.pool, planted.h0[:, 1] - planted.means[5])


def test_the_gradient_mean_is_the_clustering_runs_own_vectors(planted):
    v = cluster_vectors("gradient_mean", planted.store, planted.clustering, {})
    np.testing.assert_array_equal(v.directions, planted.clustering.comparison.result.directions)
    np.testing.assert_array_equal(v.pool, planted.store.arrays["direction"][:, 1])
    assert v.unit_pool


def test_difference_in_means_without_harmless_rows_names_the_fix(planted):
    with pytest.raises(ValueError, match="harmless prompt source.*gradient_mean"):
        cluster_vectors("diff_in_means", planted.store, planted.clustering, {3: np.zeros(D)})


def test_subsets_average_the_pool_the_way_the_cluster_was_averaged(planted):
    """Unnormalised rows keep their lengths, as in a difference in means; unit rows do not."""
    pool = np.array([[3.0, 0.0], [0.0, 1.0]])
    cluster = [Candidate("cluster 0", "cluster", 5, np.array([1.0, 0.0]), 0)]
    raw = subset_candidates(pool, cluster, [2], 1, seed=0, unit_pool=False)[0].vector
    unit = subset_candidates(pool, cluster, [2], 1, seed=0, unit_pool=True)[0].vector
    np.testing.assert_allclose(raw, np.array([3.0, 1.0]) / np.sqrt(10))
    np.testing.assert_allclose(unit, np.array([1.0, 1.0]) / np.sqrt(2))


def test_harmless_means_read_only_the_discovery_harmless_rows():
    h0 = np.arange(5 * 2 * 3, dtype=np.float32).reshape(5, 2, 3)
    labels = np.array(["harmless", "harmful", "harmless", "harmless", "harmless"], dtype=object)
    held = np.array([False, False, False, True, False])
    means = harmless_means(h0, [7, 9], held, labels, [9])
    np.testing.assert_allclose(means[9], h0[[0, 2, 4], 1].astype(np.float64).mean(axis=0))
    assert harmless_means(h0, [7, 9], np.ones(5, bool), labels, [9]) == {}
    import dask.array as da

    np.testing.assert_allclose(row_mean(da.from_array(h0, chunks=(2, 2, 3)), np.array([1, 3]), 0),
                               h0[[1, 3], 0].mean(axis=0))
