"""Clustering directions: planted clusters recovered, the residual space, assigning new rows.

ARI is computed on every row, planted noise included: the planted noise rows carry the label -1
and so does HDBSCAN's noise, so a noise row called noise agrees and a cluster row called noise
(or a noise row put in a cluster) counts against the score. That is the stricter reading.
"""

import dask.array as da
import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from refusal_atlas.tasks.clustering.spaces import ClusteringError, approximate_predict, cluster_directions, cluster_layer_of, select_layer
from refusal_atlas.tasks.settings import ClusterSettings
from tests.test_cluster_support import planted

SETTINGS = ClusterSettings(bootstraps=0)  # defaults: pca_dim 32, min_cluster_size 5


@pytest.fixture(scope="module")
def clean():
    x, truth, centres = planted()
    return x, truth, centres, cluster_directions(da.from_array(x, chunks=(500, 576)), SETTINGS)


@pytest.mark.integration
def test_planted_clusters_are_recovered_in_both_spaces(clean):
    x, truth, centres, comparison = clean
    assert comparison.rows.size == 2000 and comparison.dropped == 0
    for result in (comparison.raw, comparison.residual):
        assert adjusted_rand_score(truth, result.labels) >= 0.95, result.space
        assert result.n_clusters == 5
        assert 0.02 <= result.noise_share <= 0.08
        # Each cluster direction is one planted centre, in the full model dimension.
        cos = result.directions @ centres.T
        assert sorted(cos.argmax(axis=1).tolist()) == [0, 1, 2, 3, 4]
        assert cos.max(axis=1).min() > 0.99
        np.testing.assert_allclose(np.linalg.norm(result.directions, axis=1), 1.0, atol=1e-9)
        assert result.embedding.shape == (2000, 32)
        assert result.projection.basis.shape == (32, 576)


@pytest.mark.integration
def test_exemplars_are_members_most_probable_first(clean):
    result = clean[3].residual
    for k, rows in enumerate(result.exemplars):
        assert 1 <= rows.size <= 5 and (result.labels[rows] == k).all()
        assert np.all(np.diff(result.probabilities[rows]) <= 0)


@pytest.mark.integration
def test_residual_space_recovers_clusters_that_share_a_big_varying_component():
    # A shared direction whose size varies by row (mean pairwise cosine about 0.63, like the
    # default model's 0.5 to 0.6) drags every cluster towards one hub: the raw clustering merges
    # and drops much of them, while removing the common direction recovers them.
    x, truth, _ = planted(common=1.0, common_range=(0.0, 4.0))
    comparison = cluster_directions(x, SETTINGS)
    assert 0.5 < comparison.mean_cosine < 0.75
    raw = adjusted_rand_score(truth, comparison.raw.labels)
    residual = adjusted_rand_score(truth, comparison.residual.labels)
    assert residual >= 0.95 and raw < 0.7, (raw, residual)
    # The planted clusters are recovered exactly; the planted noise rows, which share only the
    # common component's leftover, may form one more group of their own.
    planted_rows = truth >= 0
    assert adjusted_rand_score(truth[planted_rows], comparison.residual.labels[planted_rows]) > 0.99
    assert comparison.chosen == "residual" and comparison.result is comparison.residual


@pytest.mark.integration
def test_approximate_predict_assigns_held_out_points(clean):
    _, truth, _, comparison = clean
    held_out, held_truth, _ = planted(n=500, seed=1)  # same centres, new points
    for result in (comparison.raw, comparison.residual):
        # Map each planted cluster to the found cluster most of its training members got.
        mapping = {t: np.bincount(result.labels[(truth == t) & (result.labels >= 0)]).argmax() for t in range(5)}
        labels, strengths = approximate_predict(result, held_out)
        members = held_truth >= 0
        expected = np.array([mapping[t] for t in held_truth[members]])
        assert np.mean(labels[members] == expected) >= 0.95, result.space
        assert strengths.shape == (500,) and np.all((strengths >= 0) & (strengths <= 1))


def test_rows_without_a_finite_direction_are_dropped_and_counted():
    x, truth, _ = planted(n=400, dim=64)
    x[3] = np.nan
    x[7] = 0.0
    comparison = cluster_directions(x, ClusterSettings(bootstraps=0, pca_dim=None))
    assert comparison.dropped == 2 and comparison.rows.size == 398
    assert 3 not in comparison.rows and 7 not in comparison.rows
    assert comparison.raw.projection.basis is None  # no PCA asked for
    labels, _ = approximate_predict(comparison.raw, x[:10])
    assert labels[3] == -1 and labels[7] == -1


def test_select_layer_one_layer_or_each_rows_best():
    rng = np.random.default_rng(0)
    stored = rng.standard_normal((6, 3, 8)).astype(np.float32)
    layers = np.array([12, 18, 24])
    picked, row_layer = select_layer(da.from_array(stored, chunks=(2, 3, 8)), layers, 24)
    np.testing.assert_array_equal(picked.compute(), stored[:, 2])
    assert (row_layer == 24).all()
    middle, _ = select_layer(da.from_array(stored), layers, None)
    np.testing.assert_array_equal(middle.compute(), stored[:, 1])
    best = np.array([12, 24, 18, -1, 24, 12])
    picked, row_layer = select_layer(da.from_array(stored, chunks=(2, 3, 8)), layers, "best", best)
    values = picked.compute()
    for row, layer in enumerate(best):
        if layer < 0:
            assert np.isnan(values[row]).all() and row_layer[row] == -1
        else:
            np.testing.assert_array_equal(values[row], stored[row, list(layers).index(layer)])
    with pytest.raises(ClusteringError, match="layer 7 is not stored"):
        select_layer(da.from_array(stored), layers, 7)


def test_best_layer_rows_cluster_and_each_cluster_gets_its_members_layer():
    x, truth, _ = planted(n=300, dim=64, noise_share=0.0, k=3)
    stored = np.stack([x, -x], axis=1)  # layer 5 holds the directions, layer 9 their opposites
    best = np.where(truth == 2, 9, 5)
    picked, row_layer = select_layer(da.from_array(stored, chunks=(100, 2, 64)), np.array([5, 9]), "best", best)
    comparison = cluster_directions(picked, ClusterSettings(bootstraps=0), row_layer)
    result = comparison.result
    assert adjusted_rand_score(truth, result.labels) > 0.95
    layer_of = cluster_layer_of(comparison, result)
    for k in range(result.n_clusters):
        assert layer_of[k] == (9 if np.median(truth[result.labels == k]) == 2 else 5)


def test_too_few_directions_is_a_clear_error():
    x, _, _ = planted(n=5, dim=16)
    with pytest.raises(ClusteringError, match="min_cluster_size=5.*Add prompts, or lower min_cluster_size"):
        cluster_directions(x, ClusterSettings(bootstraps=0))
    with pytest.raises(ClusteringError, match="no finite, non-zero directions"):
        cluster_directions(np.full((10, 16), np.nan), ClusterSettings(bootstraps=0))


def test_numpy_and_dask_inputs_give_the_same_clustering():
    x, _, _ = planted(n=600, dim=96, seed=3)
    a = cluster_directions(x, SETTINGS)
    b = cluster_directions(da.from_array(x, chunks=(128, 96)), SETTINGS)
    for space in ("raw", "residual"):
        np.testing.assert_array_equal(a.space(space).labels, b.space(space).labels)
        np.testing.assert_allclose(a.space(space).directions, b.space(space).directions, atol=1e-6)


@pytest.mark.integration
def test_large_sets_fit_a_subsample_and_assign_the_rest(clean):
    x, truth, _, full = clean
    comparison = cluster_directions(x, SETTINGS.model_copy(update={"fit_rows": 600}))
    for space in ("raw", "residual"):
        result = comparison.space(space)
        assert result.fitted.sum() == 600
        assert np.isnan(result.outlier_scores[~result.fitted]).all()
        assert np.isfinite(result.outlier_scores[result.fitted]).all()
        assert adjusted_rand_score(truth, result.labels) >= 0.9, space
        assert adjusted_rand_score(truth[truth >= 0], result.labels[truth >= 0]) > 0.99
    assert full.raw.fitted.all()  # 2,000 rows are below the default of 20,000: all fitted
