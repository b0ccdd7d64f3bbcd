"""Is the clustering more than chance? A null model for the cluster count, per-cluster
bootstrap stability, and the h_0 control (do the direction clusters only mirror the inputs?).

HDBSCAN finds clusters in structureless data too, and how many depends on the sample size, the
dimension and the shape of the cloud. So a cluster count means something only beside the count
the same pipeline finds where there is, by design, nothing to find. The null here is the one of
SigClust (Liu, Hayes, Nobel and Marron 2008): a single Gaussian with the data's mean and
covariance. It keeps everything about the directions that is not cluster structure (their
common component, which axes vary most, the sample size) and removes the structure, because a
Gaussian has one mode. Each surrogate set goes through exactly the pipeline the data went
through (unit rows; in the residual space the surrogate's own common direction projected out;
the same PCA and HDBSCAN, via `tasks.cluster.cluster_space`).

Two statistics are compared with the null:

- the cluster count (and noise share), as asked for. It is a weak statistic on its own: on
  300 unit rows in D = 128, HDBSCAN (min_cluster_size 5, PCA 32) found 2 to 5 small clusters in
  every structureless surrogate set of the residual space, so even three planted, well separated
  clusters gave p = 0.38 for their count of 3;
- each cluster's persistence (HDBSCAN's `cluster_persistence_`, 0 for a cluster that exists at
  one density only, 1 for one that exists at all densities), against the largest persistence
  in each surrogate set. A cluster is beyond the null when it is more persistent than the most
  persistent cluster of all but a few surrogate sets: p_k = (1 + #{sets whose largest
  persistence >= the cluster's}) / (1 + m). Comparing with the largest cluster of each set
  (a max-statistic) means that the chance of calling any cluster of a structureless set
  "beyond the null" is at most alpha, however many clusters HDBSCAN returns. Measured on the
  same sets: planted clusters 0.26 to 0.37, surrogates' largest 0 to 0.10.

The covariance is kept low-rank plus diagonal: the top `rank` principal axes of the centred
unit rows exactly, and the variance they leave per coordinate as independent noise. That keeps
each coordinate's variance and the leading axes, and costs O(n rank D) per surrogate instead of
the O(D^3) of a full covariance at D = 576 to 2048.

Shapes: n rows (prompts), D model dimension, r rank, B bootstraps, K clusters.
"""

from __future__ import annotations

from dataclasses import dataclass

import dask.array as da
import numpy as np

from refusal_atlas.tasks.clustering.spaces import Space, SpaceClustering, cluster_space
from refusal_atlas.tasks.clustering.geometry import ClusteringError, common_direction, unit_rows
from refusal_atlas.tasks.settings import ClusterSettings

#: Principal axes kept exactly in the surrogates' covariance; the rest becomes diagonal noise.
#: Twice the default PCA dimension (32), so every axis the clustering can see is exact.
DEFAULT_RANK = 64
#: Surrogate sets and bootstraps by default (the least the method allows): with 20 draws the
#: smallest empirical p-value is 1/21 = 0.048, just below 0.05.
N_DRAWS = 20
#: A cluster is "stable" when the median Jaccard of its best bootstrap match is at least this.
#: Hennig (2007, "Cluster-wise assessment of cluster stability") reads mean Jaccard values below
#: 0.6 as clusters that should not be trusted, 0.6 to 0.75 as patterns whose exact membership is
#: doubtful, and 0.75 or more as valid, stable clusters. The verdict asks only that a cluster is
#: a reproducible pattern (0.6); which prompts exactly belong to it matters less than whether
#: its direction exists, and the held-out tests judge the direction itself.
STABLE_JACCARD = 0.6


def cluster_rows(directions: np.ndarray, settings: ClusterSettings, space: Space) -> SpaceClustering:
    """Run the project's pipeline on rows [n, D] in one space: unit rows, the common direction
    removed in the residual space, PCA and HDBSCAN (`tasks.cluster.cluster_space`).

    Every row must be finite and non-zero (pass the rows that were clustered, i.e.
    `ClusterComparison.rows`), so that labels line up with the input rows.
    """
    _check_rows(directions)
    unit = unit_rows(np.asarray(directions))[0]
    common = common_direction(unit)[0] if space == "residual" else None
    return cluster_space(unit, space, settings, common=common)


def _check_rows(directions: np.ndarray) -> None:
    """Raise unless every row [n, D] is finite and non-zero (so that no row is dropped and the
    labels line up with the input rows)."""
    norms = np.linalg.norm(np.asarray(directions, dtype=np.float64), axis=1)
    bad = int(np.sum(~np.isfinite(norms) | (norms == 0)))
    if bad:
        raise ClusteringError(
            f"{bad} rows are not finite or are zero; pass only the rows that were clustered "
            "(ClusterComparison.rows)."
        )


def persistence(result: SpaceClustering) -> np.ndarray:
    """Each cluster's persistence [K] from the fitted HDBSCAN (hdbscan's cluster_persistence_)."""
    return np.asarray(result.clusterer.cluster_persistence_, dtype=np.float64)[: result.n_clusters]


# -- the Gaussian surrogate ------------------------------------------------------------------


@dataclass(frozen=True)
class GaussianSurrogate:
    """A Gaussian with a low-rank plus diagonal covariance, fitted to unit rows [n, D].

    mean [D]; axes [r, D]: principal axes scaled by their standard deviations, so that
    axes.T @ axes is the covariance's rank-r part; residual_sd [D]: the standard deviation each
    coordinate has beyond the r axes.
    """

    mean: np.ndarray
    axes: np.ndarray
    residual_sd: np.ndarray

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n draws [n, D] (float64)."""
        r, d = self.axes.shape
        return self.mean + rng.standard_normal((n, r)) @ self.axes + rng.standard_normal((n, d)) * self.residual_sd


def fit_surrogate(unit: np.ndarray, rank: int = DEFAULT_RANK, seed: int = 0) -> GaussianSurrogate:
    """The Gaussian with the mean and (low-rank plus diagonal) covariance of unit rows [n, D]."""
    from sklearn.utils.extmath import randomized_svd

    x = np.asarray(unit, dtype=np.float64)
    n, d = x.shape
    if n < 2:
        raise ClusteringError("a covariance needs at least 2 rows.")
    mean = x.mean(axis=0)
    centred = x - mean
    r = min(rank, n - 1, d)
    if r >= min(n, d) - 1:
        # Small sets: the exact thin SVD, and with it the exact sample covariance.
        _, s, vt = np.linalg.svd(centred, full_matrices=False)
        s, vt = s[:r], vt[:r]
    else:
        _, s, vt = randomized_svd(centred, n_components=r, n_iter=4, random_state=seed)
    axes = (s / np.sqrt(n - 1))[:, None] * vt
    total = np.einsum("nd,nd->d", centred, centred) / (n - 1)
    # What the r axes leave of each coordinate's variance; clipped because rounding can make
    # it slightly negative when the r axes hold nearly all of it.
    residual = np.clip(total - np.einsum("rd,rd->d", axes, axes), 0.0, None)
    return GaussianSurrogate(mean=mean, axes=axes, residual_sd=np.sqrt(residual))


# -- the null distribution of the cluster count ----------------------------------------------


@dataclass(frozen=True)
class NullModelResult:
    """The observed clustering beside the same pipeline on structureless surrogates.

    null_clusters [m] int, null_noise_share [m], null_max_persistence [m]: per surrogate set
    (the last is 0 for a set without clusters); p_clusters: empirical p-value of the observed
    cluster count, (1 + #{null >= observed}) / (1 + m); p_noise: of the observed noise share
    being this low, (1 + #{null <= observed}) / (1 + m) (less noise than chance means the rows
    are denser than a single Gaussian cloud); persistence [K] and p_persistence [K]: each
    observed cluster's persistence and its p-value against null_max_persistence. rank: the
    covariance's exact rank in the surrogates.
    """

    space: str
    n_rows: int
    observed_clusters: int
    observed_noise_share: float
    null_clusters: np.ndarray
    null_noise_share: np.ndarray
    p_clusters: float
    p_noise: float
    null_max_persistence: np.ndarray
    persistence: np.ndarray
    p_persistence: np.ndarray
    rank: int

    @property
    def n_null(self) -> int:
        return int(self.null_clusters.size)

    def count_beyond_null(self, alpha: float = 0.05) -> bool:
        """True when the observed cluster count exceeds the null's at level alpha."""
        return bool(self.p_clusters < alpha)

    def clusters_beyond_null(self, alpha: float = 0.05) -> np.ndarray:
        """[K] bool: clusters more persistent than chance at level alpha (see the module docstring)."""
        return self.p_persistence < alpha

    def describe(self, alpha: float = 0.05) -> str:
        """One sentence with both statistics and their null distributions."""
        null, top = self.null_clusters, self.null_max_persistence
        return (
            f"{int(self.clusters_beyond_null(alpha).sum())} of {self.observed_clusters} clusters are "
            f"more persistent than chance (p < {alpha:g}; the surrogates' most persistent cluster "
            f"reached {float(top.min()):.2f} to {float(top.max()):.2f}); the count of "
            f"{self.observed_clusters} against {int(null.min())} to {int(null.max())} (median "
            f"{float(np.median(null)):g}) in structureless sets has p = {self.p_clusters:.3f} "
            f"({self.n_null} sets)"
        )


def null_model(
    directions: np.ndarray,
    settings: ClusterSettings,
    space: Space | None = None,
    n_null: int = N_DRAWS,
    rank: int = DEFAULT_RANK,
    seed: int | None = None,
    observed: SpaceClustering | None = None,
    progress=iter,
) -> NullModelResult:
    """Cluster counts and noise shares on n_null seeded surrogate sets shaped like directions [n, D].

    directions: the rows that were clustered (finite, non-zero; any norm, they are unit-
    normalised as in the pipeline). space: defaults to settings.space. observed: the clustering
    of these rows in this space, if already computed (else it is computed here). seed: defaults
    to settings.seed. Surrogates are fitted to the unit rows (step 1 of the pipeline) and then
    sent through the whole pipeline, so each gets its own common direction and PCA basis, as the
    data did. progress: wraps the loop over sets (e.g. a tqdm bar; each set is a full clustering).
    """
    if n_null < 1:
        raise ValueError("the null model needs at least one surrogate set.")
    space = settings.space if space is None else space
    seed = settings.seed if seed is None else seed
    x = np.asarray(directions, dtype=np.float64)
    _check_rows(x)
    if observed is None or observed.clusterer is None:
        # A clustering read back from the store has no fitted HDBSCAN, hence no persistence.
        observed = cluster_rows(x, settings, space)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    surrogate = fit_surrogate(unit, rank, seed)
    counts = np.empty(n_null, dtype=np.int64)
    noise = np.empty(n_null)
    top = np.empty(n_null)
    for i in progress(range(n_null)):
        # One generator per set, keyed by (seed, i): set i is the same whatever n_null is.
        sample = surrogate.sample(x.shape[0], np.random.default_rng([seed, i]))
        result = cluster_rows(sample, settings, space)
        counts[i], noise[i] = result.n_clusters, result.noise_share
        top[i] = persistence(result).max(initial=0.0)
    observed_persistence = persistence(observed)
    return NullModelResult(
        space=space,
        n_rows=int(x.shape[0]),
        observed_clusters=observed.n_clusters,
        observed_noise_share=observed.noise_share,
        null_clusters=counts,
        null_noise_share=noise,
        p_clusters=float((1 + np.sum(counts >= observed.n_clusters)) / (1 + n_null)),
        p_noise=float((1 + np.sum(noise <= observed.noise_share)) / (1 + n_null)),
        null_max_persistence=top,
        persistence=observed_persistence,
        p_persistence=(1 + (top[None, :] >= observed_persistence[:, None]).sum(axis=1)) / (1 + n_null),
        rank=int(surrogate.axes.shape[0]),
    )
