"""How good a clustering of directions is: counts, cohesion, separation, stability, agreement.

Every metric is a pure function of a `SpaceClustering` (and, for agreement, dataset
categories). Conventions, stated once:

- Noise (label -1) is never a cluster. Within-cluster cosines and the silhouette use clustered
  rows only. Stability and agreement with categories count noise as one more group (a
  clustering that calls everything noise agrees with nothing), and agreement is also reported
  on the clustered rows alone.
- The silhouette and stability are computed on the embedding HDBSCAN saw (unit rows after the
  optional residual step and PCA), so each space is judged in its own geometry. Stability
  holds the PCA basis fixed: it measures how much HDBSCAN's answer depends on the sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from itertools import combinations

import numpy as np

from refusal_atlas.tasks.clustering.hdbscan_fit import fit_hdbscan
from refusal_atlas.tasks.clustering.spaces import SpaceClustering
from refusal_atlas.tasks.settings import ClusterSettings

#: Share of rows in each stability subsample (drawn without replacement: duplicated rows from
#: sampling with replacement would form dense clumps that HDBSCAN calls clusters).
SUBSAMPLE_SHARE = 0.8


@dataclass(frozen=True)
class CategoryAgreement:
    """ARI and NMI of the clustering against dataset categories, on rows that have one.

    n_used: rows with a category; ari/nmi count noise as one group; *_clustered use the
    clustered rows only (n_clustered of them; NaN when fewer than 2).
    """

    n_used: int
    n_categories: int
    ari: float
    nmi: float
    n_clustered: int
    ari_clustered: float
    nmi_clustered: float


@dataclass(frozen=True)
class ClusterMetrics:
    """The metrics of one space's clustering (see the module docstring for conventions).

    within_cosine [K]: mean pairwise cosine of each cluster's raw unit directions;
    space_within_cosine [K]: the same for the clustered space's rows; mean_* are size-weighted;
    direction_cosines [K, K]: cosines between the cluster directions;
    silhouette: mean silhouette on cosine distance (None with a reason when undefined);
    stability_*: ARI between clusterings of subsamples, on the rows two subsamples share.
    """

    space: str
    n_points: int
    n_clusters: int
    noise_share: float
    sizes: list[int]
    within_cosine: list[float]
    space_within_cosine: list[float]
    mean_within_cosine: float
    mean_space_within_cosine: float
    direction_cosines: list[list[float]]
    silhouette: float | None
    silhouette_points: int
    silhouette_note: str
    stability_mean: float | None
    stability_min: float | None
    stability_pairs: int
    categories: CategoryAgreement | None

    def as_dict(self) -> dict:
        """JSON-ready (NaN becomes None), for store attributes and artifacts."""
        return _json_ready(asdict(self))


def _json_ready(value):
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


# -- cohesion and separation ----------------------------------------------------------------


def mean_pairwise_cosine(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Mean cosine over distinct pairs of unit rows, per group, from their sums [K, D].

    For unit rows u_i with sum S, sum over i != j of u_i.u_j = |S|^2 - n, so the mean over the
    n(n - 1) ordered pairs is exact without forming any pair. NaN for groups of one row.
    """
    counts = np.asarray(counts, dtype=np.float64)
    squared = np.einsum("kd,kd->k", sums, sums)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 1, (squared - counts) / (counts * (counts - 1)), np.nan)


def weighted_mean(values: np.ndarray, weights: np.ndarray) -> float:
    ok = np.isfinite(values) & (weights > 0)
    return float(np.average(values[ok], weights=weights[ok])) if ok.any() else float("nan")


def direction_cosines(directions: np.ndarray) -> np.ndarray:
    """Cosine matrix [K, K] of unit cluster directions [K, D]."""
    return np.clip(directions @ directions.T, -1.0, 1.0)


def silhouette_cosine(embedding: np.ndarray, labels: np.ndarray, max_points: int, seed: int) -> tuple[float | None, int, str]:
    """Mean silhouette on cosine distance over clustered rows (a seeded subsample of at most
    max_points, since it costs n^2): (value or None, rows used, note)."""
    from sklearn.metrics import silhouette_score

    members = np.flatnonzero(labels >= 0)
    n_clusters = np.unique(labels[members]).size
    if n_clusters < 2:
        return None, 0, f"undefined: {n_clusters} cluster(s); a silhouette needs at least 2"
    note = "all clustered rows"
    if members.size > max_points:
        members = np.sort(np.random.default_rng(seed).choice(members, max_points, replace=False))
        note = f"a random subsample of {max_points} clustered rows"
    if np.unique(labels[members]).size < 2:
        return None, 0, "undefined: the subsample holds one cluster"
    value = silhouette_score(embedding[members], labels[members], metric="cosine")
    return float(value), int(members.size), note


# -- stability ------------------------------------------------------------------------------


def stability(
    embedding: np.ndarray,
    settings: ClusterSettings,
    max_points: int = 20_000,
    n_jobs: int | None = None,
) -> tuple[float | None, float | None, int]:
    """(mean ARI, min ARI, pairs) over all pairs of `settings.bootstraps` seeded subsamples.

    Each subsample holds SUBSAMPLE_SHARE of the rows (at most max_points, so that large sets
    stay affordable) and is clustered with the same HDBSCAN parameters; two clusterings are
    compared by ARI on the rows both subsamples contain. None when bootstraps < 2.
    """
    from sklearn.metrics import adjusted_rand_score

    n = embedding.shape[0]
    size = min(int(round(SUBSAMPLE_SHARE * n)), max_points)
    if settings.bootstraps < 2 or size <= settings.min_cluster_size:
        return None, None, 0
    rng = np.random.default_rng(settings.seed)
    runs = []
    for _ in range(settings.bootstraps):
        rows = np.sort(rng.choice(n, size, replace=False))
        labels = np.full(n, -2, dtype=np.int64)  # -2: not in this subsample
        labels[rows] = fit_hdbscan(embedding[rows], settings, n_jobs).labels_
        runs.append(labels)
    scores = []
    for a, b in combinations(runs, 2):
        shared = (a > -2) & (b > -2)
        scores.append(adjusted_rand_score(a[shared], b[shared]))
    return float(np.mean(scores)), float(np.min(scores)), len(scores)


# -- agreement with categories --------------------------------------------------------------


def has_category(categories: Sequence) -> np.ndarray:
    """True where a row has a category (not None, NaN or blank)."""
    return np.array([c is not None and not (isinstance(c, float) and np.isnan(c)) and str(c).strip() != ""
                     for c in categories], dtype=bool)


def category_agreement(labels: np.ndarray, categories: Sequence) -> CategoryAgreement | None:
    """ARI/NMI against categories on the rows that have one; None when no row has one."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    if len(categories) != labels.size:
        raise ValueError(f"{len(categories)} categories for {labels.size} clustered rows; pass one per row.")
    present = has_category(categories)
    if not present.any():
        return None
    truth = np.asarray([str(c) for c in categories], dtype=object)[present]
    found = labels[present]
    clustered = found >= 0

    def scores(t, f):
        if t.size < 2:
            return float("nan"), float("nan")
        return float(adjusted_rand_score(t, f)), float(normalized_mutual_info_score(t, f))

    ari, nmi = scores(truth, found)
    ari_c, nmi_c = scores(truth[clustered], found[clustered])
    return CategoryAgreement(int(present.sum()), int(np.unique(truth).size), ari, nmi,
                             int(clustered.sum()), ari_c, nmi_c)


# -- everything -----------------------------------------------------------------------------


def compute_metrics(
    result: SpaceClustering,
    settings: ClusterSettings,
    categories: Sequence | None = None,
    silhouette_max: int = 5_000,
    stability_max: int = 20_000,
    n_jobs: int | None = None,
) -> ClusterMetrics:
    """All metrics of one space's clustering. categories: one per clustered row, or None."""
    sizes = result.sizes.astype(np.float64)
    within = mean_pairwise_cosine(result.sums, sizes)
    space_within = mean_pairwise_cosine(result.space_sums, sizes)
    sil, sil_n, sil_note = silhouette_cosine(result.embedding, result.labels, silhouette_max, settings.seed)
    stab_mean, stab_min, pairs = stability(result.embedding, settings, stability_max, n_jobs)
    return ClusterMetrics(
        space=result.space,
        n_points=int(result.labels.size),
        n_clusters=result.n_clusters,
        noise_share=result.noise_share,
        sizes=result.sizes.astype(int).tolist(),
        within_cosine=within.tolist(),
        space_within_cosine=space_within.tolist(),
        mean_within_cosine=weighted_mean(within, sizes),
        mean_space_within_cosine=weighted_mean(space_within, sizes),
        direction_cosines=direction_cosines(result.directions).tolist(),
        silhouette=sil, silhouette_points=sil_n, silhouette_note=sil_note,
        stability_mean=stab_mean, stability_min=stab_min, stability_pairs=pairs,
        categories=None if categories is None else category_agreement(result.labels, categories),
    )
