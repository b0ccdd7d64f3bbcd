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

A median says that a cluster does not come back, not what becomes of it, and the three ways it
can fail mean different things to a researcher. So each resample also records the cluster's
fate (`fates`): kept (best Jaccard at the threshold or above); dissolved (half or more of its
drawn prompts are noise); merged (its largest piece D is less pure than complete: |C & D| / |C|
>= |C & D| / |D|, so it went into something larger than itself); else split (its largest piece
is purer than complete: it broke into parts). A cluster split in most resamples holds two or more
sub-populations; one merged in most is part of a larger pattern; one dissolved is near noise.

Shapes: n rows, D dimension, K original clusters, B bootstraps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refusal_atlas.tasks.clustering.geometry import ClusteringError
from refusal_atlas.tasks.clustering.spaces import Space
from refusal_atlas.tasks.clustering.null_model import N_DRAWS, STABLE_JACCARD, cluster_rows
from refusal_atlas.tasks.settings import ClusterSettings


#: Codes of a cluster's fate in one resample (`ClusterStability.fates`); NOT_DRAWN when none of
#: its prompts were drawn.
NOT_DRAWN, KEPT, SPLIT, MERGED, DISSOLVED = -1, 0, 1, 2, 3
FATE_NAMES = {KEPT: "kept", SPLIT: "split", MERGED: "merged", DISSOLVED: "dissolved"}


@dataclass(frozen=True)
class ClusterStability:
    """jaccard [K, B]: best-match Jaccard of each cluster in each bootstrap (NaN when none of its
    prompts were drawn); median [K]; stable [K] bool (median >= threshold); fates [K, B] int
    (KEPT, SPLIT, MERGED, DISSOLVED or NOT_DRAWN), or None for runs stored before fates were
    recorded."""

    jaccard: np.ndarray
    median: np.ndarray
    stable: np.ndarray
    threshold: float
    fates: np.ndarray | None = None

    @property
    def n_bootstraps(self) -> int:
        return int(self.jaccard.shape[1])

    def fate_counts(self, k: int) -> dict[str, int] | None:
        """{"kept": n, "split": n, "merged": n, "dissolved": n} for cluster k, or None."""
        if self.fates is None:
            return None
        row = self.fates[k]
        return {name: int(np.sum(row == code)) for code, name in FATE_NAMES.items()}

    def describe_fates(self, k: int) -> str:
        """The fates that occurred, e.g. "kept in 9, split in 11 of 20 resamples"; "" when not recorded."""
        counts = self.fate_counts(k)
        if counts is None:
            return ""
        drawn = sum(counts.values())
        parts = [f"{name} in {n}" for name, n in counts.items() if n]
        return f"{', '.join(parts)} of {drawn} resamples" if parts else ""


def fates_of(original: np.ndarray, boot: np.ndarray, n_clusters: int, jaccard: np.ndarray,
             threshold: float) -> np.ndarray:
    """Per original cluster, its fate in one resample [K] (codes above).

    original [m], boot [m]: the drawn prompts' original and bootstrap labels (-1 noise);
    jaccard [K]: best_jaccard of the same resample.
    """
    out = np.full(n_clusters, NOT_DRAWN)
    n_boot = int(boot.max(initial=-1)) + 1
    boot_sizes = np.bincount(boot[boot >= 0], minlength=n_boot)
    for k in range(n_clusters):
        mine = original == k
        drawn = int(mine.sum())
        if drawn == 0:
            continue
        if jaccard[k] >= threshold:
            out[k] = KEPT
            continue
        theirs = boot[mine]
        if np.sum(theirs < 0) * 2 >= drawn:  # also when the resample found no cluster at all
            out[k] = DISSOLVED
            continue
        pieces = np.bincount(theirs[theirs >= 0], minlength=n_boot)
        largest = int(pieces.argmax())
        complete, pure = pieces[largest] / drawn, pieces[largest] / boot_sizes[largest]
        out[k] = MERGED if complete >= pure else SPLIT
    return out


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


def resample(n_rows: int, seed: int, b: int) -> np.ndarray:
    """The sorted distinct rows [m] of resample b: n_rows drawn with replacement, each kept once
    (step 1 above). Seeded by (seed, b), so a resample can be drawn again to look inside it."""
    return np.unique(np.random.default_rng([seed, b]).integers(0, n_rows, n_rows))


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
    fates = np.full((n_clusters, n_bootstraps), NOT_DRAWN)
    for b in progress(range(n_bootstraps)):
        rows = resample(x.shape[0], seed, b)
        try:
            boot = cluster_rows(x[rows], settings, space).labels
        except ClusteringError:
            # Too few distinct rows drawn to cluster at all (small runs): no cluster reappeared
            # in this resample, so every drawn row counts as noise (Jaccard 0, dissolved).
            boot = np.full(rows.size, -1)
        jaccard[:, b] = best_jaccard(labels[rows], boot, n_clusters)
        fates[:, b] = fates_of(labels[rows], boot, n_clusters, jaccard[:, b], threshold)
    if n_clusters:
        median = np.array([np.nanmedian(row) if np.isfinite(row).any() else np.nan for row in jaccard])
    else:
        median = np.zeros(0)
    return ClusterStability(jaccard=jaccard, median=median, stable=median >= threshold, threshold=threshold,
                            fates=fates)
