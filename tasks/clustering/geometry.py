"""Geometry of direction sets, on Dask arrays: unit rows, the common direction, PCA, sums.

Everything here is a pure function of arrays. Large inputs stay Dask arrays (read lazily from
the store, a block of rows at a time); small outputs (a direction, a basis, per-cluster sums)
come back as numpy. Shapes: N rows, L stored layers, D model dimension, k PCA dimensions,
K clusters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import dask
import dask.array as da
import numpy as np

from refusal_atlas.tasks.rows import normalise_rows


class ClusteringError(ValueError):
    """The directions cannot be clustered as asked; the message names the fix."""


@dataclass(frozen=True)
class Projection:
    """What maps a full direction [D] to the clustered embedding [k] (or [D] without PCA).

    common: the unit common direction projected out (residual space), else None.
    basis: [k, D] orthonormal PCA rows (uncentred), else None.
    """

    common: np.ndarray | None
    basis: np.ndarray | None

    def apply(self, unit: da.Array | np.ndarray) -> da.Array | np.ndarray:
        """Unit rows [n, D] -> unit embedding rows [n, k], in the input's dtype (float32 rows
        stay float32, so a lazily recomputed residual of 1e6 rows never doubles in size)."""
        x = unit
        if self.common is not None:
            common = self.common.astype(x.dtype)
            x = normalise_rows(x - (x @ common)[:, None] * common[None, :])
        if self.basis is not None:
            x = normalise_rows(x @ self.basis.T.astype(x.dtype))
        return x


def select_layer(
    direction: da.Array,
    layers: np.ndarray,
    choice: int | Literal["best"] | None,
    best_layer: np.ndarray | None = None,
) -> tuple[da.Array, np.ndarray]:
    """Pick one layer's direction per row: [N, L, D] -> ([N, D], model layer of each row [N]).

    choice: a model layer index, "best" (each row's most effective layer; rows whose best layer
    is unknown (-1) get NaN and are dropped later), or None for the middle stored layer.
    """
    layers = np.asarray(layers, dtype=np.int64)
    n = direction.shape[0]
    if choice == "best":
        if best_layer is None:
            raise ClusteringError("layer='best' needs each row's best layer; pass best_layer.")
        best_layer = np.asarray(best_layer, dtype=np.int64)
        position = {int(layer): i for i, layer in enumerate(layers)}
        index = np.array([position.get(int(b), -1) for b in best_layer], dtype=np.int64)
        picked = direction.vindex[np.arange(n), np.clip(index, 0, None)]
        # Rows without a best layer become NaN, so the finiteness filter drops them.
        picked = da.where(da.from_array(index >= 0, chunks=picked.chunks[0])[:, None], picked, np.nan)
        return picked, np.where(index >= 0, best_layer, -1)
    layer = int(layers[len(layers) // 2]) if choice is None else int(choice)
    matches = np.flatnonzero(layers == layer)
    if matches.size == 0:
        raise ClusteringError(
            f"layer {layer} is not stored (stored layers: {layers.tolist()}); choose one of them or 'best'."
        )
    return direction[:, int(matches[0]), :], np.full(n, layer, dtype=np.int64)


def unit_rows(directions: da.Array | np.ndarray) -> tuple[da.Array, np.ndarray]:
    """Unit float32 rows of the finite, non-zero input rows (persisted), and their indices.

    float32 halves the memory of the one array every later step reads (1e6 x 576 is 2.3 GB);
    norms, means and sums are accumulated in float64.
    """
    x = directions if isinstance(directions, da.Array) else da.from_array(np.asarray(directions))
    x = x.rechunk({1: -1})
    norms = da.sqrt((x.astype(np.float64) ** 2).sum(axis=1))
    good = da.isfinite(norms) & (norms > 0)
    unit = (x / da.where(good, norms, 1.0)[:, None]).astype(np.float32)
    unit, good = dask.persist(unit, good)
    keep = np.flatnonzero(np.asarray(good.compute()))
    if keep.size != x.shape[0]:
        unit = unit[keep].persist()
    return unit, keep


def common_direction(unit: da.Array) -> tuple[np.ndarray, float]:
    """(normalise(mean of unit rows) [D], mean pairwise cosine of the rows).

    The mean pairwise cosine says how large the shared component is: for n unit rows with mean
    m, the mean over distinct pairs of u_i.u_j is (n^2 |m|^2 - n) / (n (n - 1)).
    """
    mean = np.asarray(unit.mean(axis=0, dtype=np.float64).compute())
    norm = float(np.linalg.norm(mean))
    if norm == 0:
        raise ClusteringError("the directions' mean is zero, so there is no common direction to remove.")
    n = unit.shape[0]
    pairwise = (n * n * norm * norm - n) / (n * (n - 1)) if n > 1 else float("nan")
    return mean / norm, float(pairwise)


def pca_basis(x: da.Array, k: int, seed: int) -> np.ndarray:
    """Top-k right singular vectors [k, D] of the uncentred rows x [n, D] (randomised, seeded)."""
    x = x.rechunk({0: "auto", 1: -1})
    # Two power iterations make the randomised range finder accurate when the spectrum decays
    # slowly, which is the usual case for directions that are mostly noise.
    _, _, vt = da.linalg.svd_compressed(x, k=k, n_power_iter=2, seed=seed)
    return np.asarray(vt.compute())


def member_sums(x: da.Array | np.ndarray, labels: np.ndarray, n_clusters: int) -> np.ndarray:
    """Per-cluster sums of the rows of x [n, D] -> [K, D] float64 (noise rows left out).

    Summed block by block, so a large x is never held whole, and no [n, K] one-hot matrix is built.
    """
    if n_clusters == 0:
        return np.zeros((0, x.shape[1]))
    if not isinstance(x, da.Array):
        return _block_sums(np.asarray(x), np.asarray(labels), n_clusters)
    x = x.rechunk({1: -1})
    bounds = np.cumsum((0, *x.chunks[0]))
    parts = [
        dask.delayed(_block_sums)(block, labels[lo:hi], n_clusters)
        for block, lo, hi in zip(x.to_delayed().ravel(), bounds[:-1], bounds[1:])
    ]
    return np.sum(dask.compute(*parts), axis=0)


def _block_sums(block: np.ndarray, labels: np.ndarray, n_clusters: int) -> np.ndarray:
    out = np.zeros((n_clusters, block.shape[1]))
    members = labels >= 0
    order = np.argsort(labels[members], kind="stable")
    sorted_labels = labels[members][order]
    if sorted_labels.size:
        starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
        out[sorted_labels[starts]] = np.add.reduceat(block[members][order].astype(np.float64), starts, axis=0)
    return out


def own_cosine(unit: da.Array, directions: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cosine of each row to its own cluster's direction [n]; noise rows get -inf."""
    if directions.shape[0] == 0:
        return np.full(labels.shape, -np.inf)
    cosines = np.asarray((unit @ directions.T.astype(unit.dtype)).compute())  # [n, K]
    own = np.take_along_axis(cosines, np.clip(labels, 0, None)[:, None], axis=1)[:, 0]
    return np.where(labels >= 0, own, -np.inf)
