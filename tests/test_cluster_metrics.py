"""Clustering metrics on inputs whose answers are known."""

import json
from itertools import combinations

import numpy as np
import pytest

from refusal_atlas.tasks.clustering.spaces import cluster_directions
from refusal_atlas.tasks.clustering.metrics import (
    category_agreement,
    compute_metrics,
    direction_cosines,
    mean_pairwise_cosine,
    silhouette_cosine,
    stability,
)
from refusal_atlas.tasks.settings import ClusterSettings
from tests.test_cluster_support import planted


def test_mean_pairwise_cosine_from_sums_matches_brute_force():
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((7, 5))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    brute = np.mean([a @ b for a, b in combinations(rows, 2)])
    got = mean_pairwise_cosine(rows.sum(axis=0)[None], np.array([7]))
    assert got[0] == pytest.approx(brute)
    # Identical rows: 1; an orthonormal set: 0; a single row: undefined.
    same = mean_pairwise_cosine(np.array([[3.0, 0.0]]), np.array([3]))
    ortho = mean_pairwise_cosine(np.eye(4).sum(axis=0)[None], np.array([4]))
    single = mean_pairwise_cosine(np.array([[1.0, 0.0]]), np.array([1]))
    assert same[0] == pytest.approx(1.0) and ortho[0] == pytest.approx(0.0) and np.isnan(single[0])


def test_direction_cosines_of_known_directions():
    d = np.array([[1.0, 0.0], [0.0, 1.0], [np.sqrt(0.5), np.sqrt(0.5)]])
    np.testing.assert_allclose(direction_cosines(d), [[1, 0, np.sqrt(0.5)], [0, 1, np.sqrt(0.5)],
                                                      [np.sqrt(0.5), np.sqrt(0.5), 1]])


def test_category_agreement_ignores_rows_without_a_category_and_says_how_many_were_used():
    labels = np.array([0, 0, 1, 1, -1, 2, 2])
    categories = ["a", "a", "b", "b", "c", None, ""]
    result = category_agreement(labels, categories)
    assert result.n_used == 5 and result.n_categories == 3
    assert result.ari == pytest.approx(1.0) and result.nmi == pytest.approx(1.0)  # noise is group "c"
    assert result.n_clustered == 4 and result.ari_clustered == pytest.approx(1.0)
    assert category_agreement(labels, [None] * 7) is None
    # Everything noise agrees with no categorisation.
    assert category_agreement(np.full(4, -1), ["a", "a", "b", "b"]).ari == pytest.approx(0.0)
    with pytest.raises(ValueError, match="one per row"):
        category_agreement(labels, ["a"])


def test_silhouette_is_undefined_for_one_cluster_and_high_for_separated_ones():
    x = np.array([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0], [0.1, 0.99]])
    value, used, _ = silhouette_cosine(x, np.array([0, 0, 1, 1]), max_points=100, seed=0)
    assert value > 0.9 and used == 4
    value, used, note = silhouette_cosine(x, np.array([0, 0, -1, -1]), max_points=100, seed=0)
    assert value is None and used == 0 and "1 cluster" in note
    _, used, note = silhouette_cosine(np.repeat(x, 50, axis=0), np.repeat([0, 0, 1, 1], 50), max_points=60, seed=0)
    assert used == 60 and "subsample" in note


def test_stability_of_planted_clusters_is_high_and_needs_two_bootstraps():
    x, _, _ = planted(n=600, dim=24, noise_share=0.0)
    embedding = x / np.linalg.norm(x, axis=1, keepdims=True)
    mean, low, pairs = stability(embedding.astype(np.float64), ClusterSettings(bootstraps=3))
    assert pairs == 3 and mean > 0.95 and low > 0.9
    assert stability(embedding, ClusterSettings(bootstraps=1)) == (None, None, 0)


def test_compute_metrics_on_planted_clusters():
    x, truth, _ = planted(n=800, dim=64)
    settings = ClusterSettings(bootstraps=2, pca_dim=16)
    result = cluster_directions(x, settings).residual
    categories = [f"topic{t}" if t >= 0 else None for t in truth]
    m = compute_metrics(result, settings, categories)
    assert m.n_points == 800 and m.n_clusters == 5 and sum(m.sizes) == round(800 * (1 - m.noise_share))
    # Members sit at cosine about 0.78 from their centre, so pairs at about 0.6.
    assert 0.5 < m.mean_within_cosine < 0.7
    assert np.allclose(np.diag(m.direction_cosines), 1.0)
    assert m.silhouette > 0.5 and m.stability_pairs == 1 and m.stability_mean > 0.9
    assert m.categories.n_used == int((truth >= 0).sum()) and m.categories.ari_clustered > 0.99
    json.dumps(m.as_dict(), allow_nan=False)  # JSON-ready for store attributes
