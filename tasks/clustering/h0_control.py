"""The h_0 control: do the direction clusters only mirror the prompts' own activations?

A direction is computed from a prompt's activation h_0, so prompts that look alike (the same
surface form, "How to ...?" against "Why do all X ...?") can get alike directions for that
reason alone. Clustering h_0 itself with the same pipeline and comparing the two clusterings
says how much of the direction clustering the inputs already explain: an ARI near 1 means the
direction clusters are the input clusters again, near 0 that they are not.

Two ARIs are reported, following tasks.cluster_metrics: one with noise as a group of its own
(a prompt that is noise in both clusterings agrees), and one on the prompts clustered in both
(how the clusters themselves correspond, whatever each called noise).

Shapes: n prompts, D_h activation dimension.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import adjusted_rand_score

from refusal_atlas.tasks.clustering.spaces import Space
from refusal_atlas.tasks.clustering.null_model import cluster_rows
from refusal_atlas.tasks.settings import ClusterSettings


@dataclass(frozen=True)
class H0Control:
    """labels [n]: the clusters of h_0 (-1 noise); ari: against the direction clusters with noise
    as its own group; ari_clustered: on the n_clustered prompts clustered in both (NaN below 2)."""

    labels: np.ndarray
    n_clusters: int
    noise_share: float
    ari: float
    ari_clustered: float
    n_clustered: int

    def describe(self) -> str:
        return (
            f"clustering the prompts' own activations h_0 gives {self.n_clusters} clusters; ARI with "
            f"the direction clusters {self.ari:.2f} (noise as a group), {self.ari_clustered:.2f} on "
            f"the {self.n_clustered} prompts clustered in both"
        )


def h0_control(
    activations: np.ndarray,
    direction_labels: np.ndarray,
    settings: ClusterSettings,
    space: Space | None = None,
) -> H0Control:
    """Cluster activations h_0 [n, D_h] with the direction clustering's settings and space
    (default settings.space) and compare with direction_labels [n] (-1 noise), row by row."""
    h0 = np.asarray(activations)
    theirs = np.asarray(direction_labels, dtype=np.int64)
    if theirs.shape != (h0.shape[0],):
        raise ValueError(f"{theirs.size} direction labels for {h0.shape[0]} activations; pass one per prompt.")
    space = settings.space if space is None else space
    result = cluster_rows(h0, settings, space)
    ours = result.labels
    both = (ours >= 0) & (theirs >= 0)
    clustered = float(adjusted_rand_score(theirs[both], ours[both])) if both.sum() >= 2 else float("nan")
    return H0Control(
        labels=ours,
        n_clusters=result.n_clusters,
        noise_share=result.noise_share,
        ari=float(adjusted_rand_score(theirs, ours)),
        ari_clustered=clustered,
        n_clustered=int(both.sum()),
    )
