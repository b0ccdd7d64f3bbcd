"""Bootstrap stability per cluster: does each cluster come back when the prompts are resampled?

A clustering-wide score (one ARI for all clusters) hides a single unstable cluster among stable
ones, and the verdict counts clusters one by one, so stability is judged per cluster, as in
Hennig (2007, "Cluster-wise assessment of cluster stability"; the R package fpc's clusterboot):

1. draw n prompts with replacement, and keep each drawn prompt once (clusterboot's default,
   multipleboot = FALSE). Copies of a row sit at distance zero from each other, so a row drawn
   five times is a dense clump that HDBSCAN with min_cluster_size 5 calls a cluster on its own;
   keeping one copy avoids clusters made by the resampling. About 63% of the prompts remain;
2. run the whole pipeline again on them (common direction, PCA basis and HDBSCAN all refitted,
   since each is estimated from the sample and each can move the clusters);
3. for each original cluster C, restricted to the prompts drawn, take the Jaccard similarity
   |C & D| / |C | D| with every bootstrap cluster D and keep the best (0 when HDBSCAN found no
   cluster); a cluster none of whose prompts were drawn gives NaN for that bootstrap;
4. summarise each cluster by the median over bootstraps; it is stable when the median is at
   least STABLE_JACCARD (0.6, see there for the reason).

Shapes: n rows, D dimension, K original clusters, B bootstraps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refusal_atlas.tasks.clustering.geometry import ClusteringError
from refusal_atlas.tasks.clustering.spaces import Space
from refusal_atlas.tasks.clustering.null_model import N_DRAWS, STABLE_JACCARD, cluster_rows
from refusal_atlas.tasks.settings import ClusterSettings


@dataclass(frozen=True)
class ClusterStability:
    """jaccard [K, B]: best-match Jaccard of each cluster in each bootstrap (NaN when none of its
    prompts were drawn); median [K]; stable [K] bool (median >= threshold)."""

    jaccard: np.ndarray
    median: np.ndarray
    stable: np.ndarray
    threshold: float

    @property
    def n_bootstraps(self) -> int:
        return int(self.jaccard.shape[1])


def best_jaccard(original: np.ndarray, boot: np.ndarray, n_clusters: int) -> np.ndarray:
    """Per original cluster, the best Jaccard with any bootstrap cluster [K].

    original [m]: the original labels of the drawn prompts (-1 noise); boot [m]: their labels in
    the bootstrap clustering. Noise is never a cluster on either side.
    """
    n_boot = int(boot.max(initial=-1)) + 1
    out = np.full(n_clusters, np.nan)
    sizes = np.bincount(original[original >= 0], minlength=n_clusters)
    if n_boot == 0:
        out[sizes > 0] = 0.0
        return out
    both = (original >= 0) & (boot >= 0)
    # Contingency table [K, K_boot] of prompts in original cluster k and bootstrap cluster j.
    table = np.zeros((n_clusters, n_boot))
    np.add.at(table, (original[both], boot[both]), 1)
    boot_sizes = np.bincount(boot[boot >= 0], minlength=n_boot)
    union = sizes[:, None] + boot_sizes[None, :] - table
    with np.errstate(invalid="ignore", divide="ignore"):
        jaccard = np.where(union > 0, table / union, 0.0)
    out[sizes > 0] = jaccard.max(axis=1)[sizes > 0]
    return out


def bootstrap_stability(
    directions: np.ndarray,
    labels: np.ndarray,
    settings: ClusterSettings,
    space: Space | None = None,
    n_bootstraps: int = N_DRAWS,
    seed: int | None = None,
    threshold: float = STABLE_JACCARD,
    progress=iter,
) -> ClusterStability:
    """Per-cluster bootstrap stability of the clustering `labels` [n] of directions [n, D].

    directions: the rows that were clustered (finite, non-zero), in the order of labels.
    space: defaults to settings.space; seed: to settings.seed. progress: wraps the loop over
    bootstraps (e.g. a tqdm bar; each bootstrap is a full clustering).
    """
    x = np.asarray(directions)
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (x.shape[0],):
        raise ValueError(f"{labels.size} labels for {x.shape[0]} rows; pass one label per clustered row.")
    if n_bootstraps < 1:
        raise ValueError("bootstrap stability needs at least one bootstrap.")
    space = settings.space if space is None else space
    seed = settings.seed if seed is None else seed
    n_clusters = int(labels.max(initial=-1)) + 1
    jaccard = np.full((n_clusters, n_bootstraps), np.nan)
    for b in progress(range(n_bootstraps)):
        rows = np.unique(np.random.default_rng([seed, b]).integers(0, x.shape[0], x.shape[0]))
        try:
            boot = cluster_rows(x[rows], settings, space).labels
        except ClusteringError:
            # Too few distinct rows drawn to cluster at all (small runs): no cluster reappeared
            # in this resample, which is what a Jaccard of 0 says.
            jaccard[:, b] = 0.0
            continue
        jaccard[:, b] = best_jaccard(labels[rows], boot, n_clusters)
    if n_clusters:
        median = np.array([np.nanmedian(row) if np.isfinite(row).any() else np.nan for row in jaccard])
    else:
        median = np.zeros(0)
    return ClusterStability(jaccard=jaccard, median=median, stable=median >= threshold, threshold=threshold)
