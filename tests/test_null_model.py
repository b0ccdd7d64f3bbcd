"""The clustering's null model, per-cluster bootstrap stability and the h_0 control, on planted
answers: three separated directions, one direction plus noise, isotropic noise."""

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from refusal_atlas.tasks.clustering.geometry import ClusteringError
from refusal_atlas.tasks.clustering.h0_control import h0_control
from refusal_atlas.tasks.clustering.null_model import STABLE_JACCARD, cluster_rows, fit_surrogate, null_model
from refusal_atlas.tasks.clustering.stability import (
    DISSOLVED, KEPT, MERGED, NOT_DRAWN, SPLIT, best_jaccard, bootstrap_stability, fates_of,
)
from tests.test_cluster_support import planted
from tests.verdict_support import SETTINGS, case, three_directions


def test_three_planted_directions_are_beyond_the_null_and_stable():
    three = case("three")
    truth = three_directions()[1]
    assert three.observed.n_clusters == 3
    assert adjusted_rand_score(truth, three.observed.labels) > 0.95
    null = three.null
    assert null.n_null == 20 and null.null_clusters.shape == (20,)
    # Every planted cluster is more persistent than every surrogate set's most persistent one.
    assert null.clusters_beyond_null().all()
    np.testing.assert_allclose(null.p_persistence, 1 / 21)
    assert null.persistence.min() > 2 * null.null_max_persistence.max()
    # The planted rows are all clustered; structureless surrogates leave most rows as noise.
    assert null.observed_noise_share < 0.05 and null.null_noise_share.min() > 0.5
    assert null.p_noise == pytest.approx(1 / 21)
    assert three.stability.stable.all() and three.stability.median.min() > 0.9
    assert three.stability.jaccard.shape == (3, 20)


def test_one_direction_plus_noise_has_no_cluster_beyond_the_null():
    one = case("one")
    assert not one.null.clusters_beyond_null().any()
    assert one.null.p_clusters >= 0.05
    # Whatever HDBSCAN picked out of the noise does not come back under resampling.
    assert not one.stability.stable.any()


def test_isotropic_noise_is_not_beyond_the_null():
    null = case("isotropic", with_stability=False).null
    assert null.p_clusters >= 0.05
    assert not null.clusters_beyond_null().any()
    assert "structureless" in null.describe()


def test_null_model_is_seeded():
    rows = three_directions(n=120)[0]
    first = null_model(rows, SETTINGS, n_null=3, seed=7)
    again = null_model(rows, SETTINGS, n_null=3, seed=7)
    np.testing.assert_array_equal(first.null_clusters, again.null_clusters)
    np.testing.assert_array_equal(first.null_max_persistence, again.null_max_persistence)


def test_surrogate_keeps_the_mean_the_leading_axes_and_each_coordinate_variance():
    rows = three_directions()[0].astype(np.float64)
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    surrogate = fit_surrogate(unit, rank=8)
    sample = surrogate.sample(20_000, np.random.default_rng(0))
    np.testing.assert_allclose(sample.mean(axis=0), unit.mean(axis=0), atol=0.01)
    np.testing.assert_allclose(sample.var(axis=0), unit.var(axis=0, ddof=1), rtol=0.1, atol=1e-4)
    # The top axes of the data carry the same variance in the surrogate.
    centred = unit - unit.mean(axis=0)
    top = np.linalg.svd(centred, full_matrices=False)[2][:2]
    data_var = ((centred @ top.T) ** 2).sum(axis=0) / (len(unit) - 1)
    sample_var = (((sample - sample.mean(axis=0)) @ top.T) ** 2).mean(axis=0)
    np.testing.assert_allclose(sample_var, data_var, rtol=0.1)


def test_best_jaccard_per_cluster():
    original = np.array([0, 0, 0, 0, 1, 1, 1, -1, -1])
    boot = np.array([2, 2, 2, -1, 0, 0, 1, 1, -1])
    # Cluster 0 = {0,1,2,3}; bootstrap cluster 2 = {0,1,2}: 3/4. Cluster 1 = {4,5,6}; bootstrap
    # cluster 0 = {4,5}: 2/3 (bootstrap cluster 1 = {6,7}: 1/4).
    np.testing.assert_allclose(best_jaccard(original, boot, 3), [0.75, 2 / 3, np.nan])
    np.testing.assert_array_equal(best_jaccard(original, np.full(9, -1), 2), [0.0, 0.0])


def test_fates_of_names_what_became_of_each_cluster():
    # Original clusters: 0 = rows 0-5, 1 = rows 6-9, 2 = rows 10-13, 3 = rows 14-17, 4 = not drawn.
    original = np.array([0] * 6 + [1] * 4 + [2] * 4 + [3] * 4)
    boot = np.array(
        [0] * 6          # cluster 0 comes back whole: kept
        + [1, 1, 2, 2]   # cluster 1 breaks into two pure halves: split
        + [3, 3, 3, 3]   # cluster 2 comes back inside a cluster of six, with two of cluster 3: merged
        + [3, 3, -1, -1]  # cluster 3: two in the merged cluster, half noise: dissolved
    )
    jaccard = best_jaccard(original, boot, 5)
    np.testing.assert_allclose(jaccard[:4], [1.0, 0.5, 4 / 6, 2 / 8])
    fates = fates_of(original, boot, 5, jaccard, threshold=0.7)
    np.testing.assert_array_equal(fates, [KEPT, SPLIT, MERGED, DISSOLVED, NOT_DRAWN])
    # At a threshold of 0.6 the merged cluster's best Jaccard (0.67) counts as kept.
    assert fates_of(original, boot, 5, jaccard, threshold=0.6)[2] == KEPT
    # A resample in which nothing was clustered dissolves every drawn cluster.
    nothing = np.full(original.size, -1)
    np.testing.assert_array_equal(
        fates_of(original, nothing, 5, best_jaccard(original, nothing, 5), 0.6), [DISSOLVED] * 4 + [NOT_DRAWN])


def test_bootstrap_fates_tell_a_split_from_a_merge_on_planted_clusters():
    """Three planted directions, labelled wrongly on purpose: two planted clusters given as one
    come apart in the resamples (split); one planted cluster cut in two halves comes back whole,
    each half inside it (merged). The third, labelled right, is kept."""
    rows, truth, _ = three_directions(n=150)
    joined = np.where(truth == 2, 1, truth)  # planted 1 and 2 as one cluster 1
    stability = bootstrap_stability(rows, joined, SETTINGS, "residual", n_bootstraps=6)
    assert (stability.fates[0] == KEPT).all()
    assert (stability.fates[1] == SPLIT).sum() >= 5 and not stability.stable[1]
    cut = truth.copy()
    members = np.flatnonzero(truth == 0)
    cut[members[::2]] = 3  # planted 0 in two halves: clusters 0 and 3
    halves = bootstrap_stability(rows, cut, SETTINGS, "residual", n_bootstraps=6)
    assert (halves.fates[[0, 3]] == MERGED).sum() >= 10 and not halves.stable[[0, 3]].any()
    assert halves.fate_counts(1) == {"kept": 6, "split": 0, "merged": 0, "dissolved": 0}
    assert "merged in" in halves.describe_fates(0) and halves.describe_fates(0).endswith("of 6 resamples")


def test_cluster_rows_refuses_rows_it_would_drop():
    rows = three_directions(n=60)[0]
    rows[3] = 0
    with pytest.raises(ClusteringError, match="ClusterComparison.rows"):
        cluster_rows(rows, SETTINGS, "residual")
    assert STABLE_JACCARD == 0.6


def test_h0_control_sees_directions_that_mirror_the_inputs():
    h0, truth, _ = planted(n=300, dim=64, k=3, noise_share=0.0, common=1.0, seed=3)
    mapped = h0 @ np.random.default_rng(4).standard_normal((64, 96))  # a fixed linear map of h_0
    directions = cluster_rows(mapped, SETTINGS, "residual")
    assert adjusted_rand_score(truth, directions.labels) > 0.9
    control = h0_control(h0, directions.labels, SETTINGS)
    assert control.n_clusters == 3
    assert control.ari > 0.9 and control.ari_clustered > 0.9
    # Directions clustered independently of the inputs: no agreement beyond chance.
    independent = cluster_rows(planted(n=300, dim=64, k=3, noise_share=0.0, common=1.0, seed=5,
                                       centre_seed=9)[0], SETTINGS, "residual")
    apart = h0_control(h0, independent.labels, SETTINGS)
    assert abs(apart.ari) < 0.1 and abs(apart.ari_clustered) < 0.1
    assert "ARI" in apart.describe()
    with pytest.raises(ValueError):
        h0_control(h0, directions.labels[:10], SETTINGS)
