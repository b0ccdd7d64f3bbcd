"""HDBSCAN itself: its parameters, fitting (on a subsample beyond fit_rows), and exemplars.

Euclidean distance on unit rows orders pairs as cosine does (metric="cosine" raises, hdbscan
issue 733); prediction data is kept so that new prompts can be assigned to the clusters later.
"""

from __future__ import annotations

import numpy as np

from refusal_atlas.tasks.clustering.geometry import ClusteringError
from refusal_atlas.tasks.settings import ClusterSettings

#: Exemplar prompts kept per cluster.
N_EXEMPLARS = 5


def hdbscan_params(settings: ClusterSettings, n_jobs: int | None = None) -> dict:
    """Keyword arguments of hdbscan.HDBSCAN for these settings.

    n_jobs defaults to 1: hdbscan parallelises only its core-distance query, in joblib worker
    processes, and on 2 cores starting them cost more than the query saved (measured).
    """
    return {
        "min_cluster_size": settings.min_cluster_size,
        "min_samples": settings.min_samples,
        "cluster_selection_method": settings.selection,
        "metric": "euclidean",
        "prediction_data": True,
        "core_dist_n_jobs": n_jobs or 1,
    }


def fit_hdbscan(embedding: np.ndarray, settings: ClusterSettings, n_jobs: int | None = None):
    """HDBSCAN fitted on unit rows [n, k]; raises if there are too few rows."""
    import hdbscan

    needed = max(settings.min_cluster_size, settings.min_samples or 0) + 1
    if embedding.shape[0] < needed:
        raise ClusteringError(
            f"{embedding.shape[0]} directions cannot be clustered with min_cluster_size="
            f"{settings.min_cluster_size} and min_samples={settings.min_samples}: HDBSCAN needs at "
            f"least {needed}. Add prompts, or lower min_cluster_size."
        )
    return hdbscan.HDBSCAN(**hdbscan_params(settings, n_jobs)).fit(np.ascontiguousarray(embedding, dtype=np.float64))


def fit_and_assign(embedding: np.ndarray, settings: ClusterSettings, n_jobs: int | None = None):
    """(clusterer, labels [n], probabilities [n], outlier scores [n], fitted [n] bool).

    HDBSCAN's neighbour queries cost far more than linear time in 32 dimensions (100,000 rows:
    minutes on 2 cores), so beyond fit_rows rows it is fitted on a seeded subsample and the
    other rows are assigned with approximate_predict, the route hdbscan documents for new
    points. Assigned rows get the prediction's strength as probability and NaN outlier scores
    (GLOSH scores are defined for the fitted rows). Note that min_cluster_size then applies to
    the subsample.
    """
    import hdbscan

    n = embedding.shape[0]
    fit_rows = settings.fit_rows
    fitted = np.ones(n, dtype=bool)
    if fit_rows is not None and n > fit_rows:
        fitted[:] = False
        fitted[np.random.default_rng(settings.seed).choice(n, fit_rows, replace=False)] = True
    clusterer = fit_hdbscan(embedding[fitted], settings, n_jobs)
    labels = np.full(n, -1, dtype=np.int64)
    probabilities = np.zeros(n)
    outlier_scores = np.full(n, np.nan)
    labels[fitted] = clusterer.labels_
    probabilities[fitted] = clusterer.probabilities_
    outlier_scores[fitted] = clusterer.outlier_scores_
    if not fitted.all():
        found, strength = hdbscan.approximate_predict(clusterer, np.ascontiguousarray(embedding[~fitted]))
        labels[~fitted], probabilities[~fitted] = found, strength
    return clusterer, labels, probabilities, outlier_scores, fitted


def exemplars(labels: np.ndarray, probabilities: np.ndarray, cosine: np.ndarray, n: int = N_EXEMPLARS) -> list[np.ndarray]:
    """Per cluster, up to n member indices: highest membership probability first, ties (HDBSCAN
    gives many core points probability 1) broken by cosine to the cluster direction."""
    out = []
    for k in range(int(labels.max(initial=-1)) + 1):
        members = np.flatnonzero(labels == k)
        order = np.lexsort((-cosine[members], -probabilities[members]))
        out.append(members[order[:n]])
    return out
