"""Clustering per-prompt refusal directions into a few shared directions (HDBSCAN over Dask).

The steps, for each of the two spaces ("raw" and "residual"), from directions [N, D]:

1. unit-normalise every row (rows that are not finite or zero are dropped and counted);
2. residual space only: project out the common direction m = normalise(mean of the unit rows)
   and re-normalise. The raw directions of one model share a large component (mean pairwise
   cosine 0.5 to 0.6 on the default model) whose size varies from prompt to prompt; that
   variation can swamp the differences between groups, so both spaces are always reported;
3. when D > pca_dim: project onto the top pca_dim right singular vectors of the (uncentred)
   unit rows, computed with `dask.array.linalg.svd_compressed`, and re-normalise. The SVD is
   deliberately uncentred: centring would subtract the common component in the raw space too,
   and re-normalising centred rows would turn the raw clustering into the residual one;
4. HDBSCAN, euclidean on the unit rows (which orders pairs as cosine does; metric="cosine"
   raises, hdbscan issue 733), with prediction data so new prompts can be assigned later.

Each cluster's direction is the normalised mean of its members' unit directions in the full
model dimension (raw rows, so the direction can be added to the residual stream as it is); the
normalised mean of the members' clustered-space rows is kept beside it.

Shapes: N rows, L stored layers, D model dimension, k PCA dimensions, K clusters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import dask.array as da
import numpy as np

from refusal_atlas.tasks.rows import normalise_rows
from refusal_atlas.tasks.clustering.geometry import (
    ClusteringError,
    Projection,
    common_direction,
    member_sums,
    own_cosine,
    pca_basis,
    select_layer,
    unit_rows,
)
from refusal_atlas.tasks.clustering.hdbscan_fit import exemplars, fit_and_assign
from refusal_atlas.tasks.settings import ClusterSettings

Space = Literal["raw", "residual"]
SPACES: tuple[Space, ...] = ("raw", "residual")


@dataclass(frozen=True)
class SpaceClustering:
    """One space's clustering of n rows.

    labels [n] int (-1 noise), probabilities [n], outlier_scores [n] (GLOSH; NaN for rows
    assigned by approximate_predict rather than fitted); fitted [n] bool: rows HDBSCAN was fitted on;
    directions [K, D]: unit mean of the members' raw unit directions (the steering direction);
    space_directions [K, D]: unit mean of the members' rows in this space;
    sums, space_sums [K, D] float64: the unnormalised member sums (for within-cluster cosines);
    sizes [K]; exemplars: per cluster, member row indices, most representative first;
    embedding [n, k] float64: what HDBSCAN saw; projection and clusterer assign new rows.
    """

    space: Space
    labels: np.ndarray
    probabilities: np.ndarray
    outlier_scores: np.ndarray
    fitted: np.ndarray
    directions: np.ndarray
    space_directions: np.ndarray
    sums: np.ndarray
    space_sums: np.ndarray
    sizes: np.ndarray
    exemplars: list[np.ndarray]
    embedding: np.ndarray = field(repr=False)
    projection: Projection = field(repr=False)
    clusterer: object = field(repr=False)

    @property
    def n_clusters(self) -> int:
        return int(self.sizes.size)

    @property
    def noise_share(self) -> float:
        return float(np.mean(self.labels < 0)) if self.labels.size else float("nan")


@dataclass(frozen=True)
class ClusterComparison:
    """Raw and residual clusterings of the same rows, side by side.

    rows: indices of the input rows that were clustered (finite, non-zero directions);
    dropped: how many input rows were left out for that reason; row_layer [n]: the model layer
    each clustered row's direction came from; common: the unit common direction [D];
    mean_cosine: the mean pairwise cosine of the clustered unit directions.
    """

    raw: SpaceClustering
    residual: SpaceClustering
    chosen: Space
    common: np.ndarray
    mean_cosine: float
    rows: np.ndarray
    dropped: int
    row_layer: np.ndarray
    settings: ClusterSettings

    def space(self, name: Space) -> SpaceClustering:
        return self.raw if name == "raw" else self.residual

    @property
    def result(self) -> SpaceClustering:
        """The clustering that defines the cluster directions (settings.space)."""
        return self.space(self.chosen)


# -- one space, and both ---------------------------------------------------------------------


def cluster_space(
    unit: da.Array,
    space: Space,
    settings: ClusterSettings,
    common: np.ndarray | None = None,
    n_jobs: int | None = None,
) -> SpaceClustering:
    """Cluster unit rows [n, D] in one space (see the module docstring for the steps)."""
    if space == "residual" and common is None:
        common = common_direction(unit)[0]
    x = space_rows(unit, space, common)
    basis, embedding = embed(x, settings.pca_dim, settings.seed)
    projection = Projection(common if space == "residual" else None, basis)
    clusterer, labels, probabilities, outlier_scores, fitted = fit_and_assign(embedding, settings, n_jobs)
    return space_clustering(
        space, unit, x, labels, probabilities, outlier_scores, fitted, embedding, projection, clusterer
    )


def space_rows(unit: da.Array, space: Space, common: np.ndarray | None) -> da.Array:
    """The rows [n, D] clustered in `space`: the unit rows, or (residual) the unit rows with the
    common direction projected out and re-normalised."""
    return unit if space == "raw" else Projection(common, None).apply(unit)


def embed(x: da.Array, pca_dim: int | None, seed: int) -> tuple[np.ndarray | None, np.ndarray]:
    """What HDBSCAN sees of the rows x [n, D]: (PCA basis [k, D], or None without PCA; embedding
    [n, k] float64, re-normalised). PCA runs when D > pca_dim, with k = min(pca_dim, n)."""
    if pca_dim is None or x.shape[1] <= pca_dim:
        return None, np.asarray(x.compute(), dtype=np.float64)
    basis = pca_basis(x, min(pca_dim, x.shape[0]), seed)
    return basis, np.asarray(normalise_rows(x @ basis.T.astype(x.dtype)).compute(), dtype=np.float64)


def space_clustering(
    space: Space,
    unit,
    x,
    labels: np.ndarray,
    probabilities: np.ndarray,
    outlier_scores: np.ndarray,
    fitted: np.ndarray,
    embedding: np.ndarray,
    projection: Projection,
    clusterer,
    directions: np.ndarray | None = None,
) -> SpaceClustering:
    """A SpaceClustering from its labels, with everything derived from them computed here once:
    member sums in the full dimension (`unit` [n, D]) and in the space (`x` [n, D], the rows
    clustered), cluster and space directions, sizes and exemplars. `directions` [k, D] may be
    given (a stored run's centroids); by default they are the normalised member sums."""
    n_clusters = int(labels.max(initial=-1)) + 1
    sums = member_sums(unit, labels, n_clusters)
    space_sums = sums if space == "raw" else member_sums(x, labels, n_clusters)
    if directions is None:
        directions = np.asarray(normalise_rows(sums))
    return SpaceClustering(
        space=space,
        labels=labels,
        probabilities=probabilities,
        outlier_scores=outlier_scores,
        fitted=fitted,
        directions=directions,
        space_directions=np.asarray(normalise_rows(space_sums)),
        sums=sums,
        space_sums=space_sums,
        sizes=np.bincount(labels[labels >= 0], minlength=n_clusters),
        exemplars=exemplars(labels, probabilities, own_cosine(unit, directions, labels)),
        embedding=embedding,
        projection=projection,
        clusterer=clusterer,
    )


def cluster_directions(
    directions: da.Array | np.ndarray,
    settings: ClusterSettings,
    row_layer: np.ndarray | None = None,
    n_jobs: int | None = None,
) -> ClusterComparison:
    """Cluster directions [N, D] in the raw and the residual space.

    Rows that are not finite or are zero (failed prompts) are dropped and counted; `rows` in
    the result maps clustered rows back to the input. Beyond settings.fit_rows rows HDBSCAN is fitted
    on a seeded subsample and the rest are assigned (see `fit_and_assign`); None fits every row.
    """
    unit, keep = unit_rows(directions)
    if keep.size == 0:
        raise ClusteringError("no finite, non-zero directions to cluster: are any rows done?")
    common, mean_cosine = common_direction(unit)
    raw = cluster_space(unit, "raw", settings, n_jobs=n_jobs)
    residual = cluster_space(unit, "residual", settings, common=common, n_jobs=n_jobs)
    n = directions.shape[0]
    layer = np.full(n, -1, dtype=np.int64) if row_layer is None else np.asarray(row_layer, dtype=np.int64)
    return ClusterComparison(
        raw=raw,
        residual=residual,
        chosen=settings.space,
        common=common,
        mean_cosine=mean_cosine,
        rows=keep,
        dropped=int(n - keep.size),
        row_layer=layer[keep],
        settings=settings,
    )


def approximate_predict(result: SpaceClustering, directions: np.ndarray | da.Array) -> tuple[np.ndarray, np.ndarray]:
    """Assign new directions [m, D] to existing clusters: (labels [m], strengths [m]).

    The new rows go through the same normalisation, common-direction removal and PCA basis as
    the clustered rows. Rows that are not finite or zero get label -1 and strength 0.
    """
    import hdbscan

    unit, keep = unit_rows(directions)
    m = directions.shape[0]
    labels, strengths = np.full(m, -1, dtype=np.int64), np.zeros(m)
    if keep.size:
        embedding = np.asarray(result.projection.apply(unit).compute(), dtype=np.float64)
        found, strength = hdbscan.approximate_predict(result.clusterer, embedding)
        labels[keep], strengths[keep] = found, strength
    return labels, strengths


def cluster_layer_of(comparison: ClusterComparison, result: SpaceClustering) -> np.ndarray:
    """The model layer each cluster's direction belongs to [K]: the members' most common layer
    (with one chosen layer that is simply the layer)."""
    out = np.full(result.n_clusters, -1, dtype=np.int64)
    for k in range(result.n_clusters):
        layers = comparison.row_layer[result.labels == k]
        layers = layers[layers >= 0]
        if layers.size:
            values, counts = np.unique(layers, return_counts=True)
            out[k] = int(values[np.argmax(counts)])
    return out
