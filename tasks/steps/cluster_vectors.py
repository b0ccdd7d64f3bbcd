"""Which vector stands for each cluster in the evaluation, and the controls built the same way.

A cluster is a set of discovery prompts; the design's vector for it is the normalised mean of its
members' Option 1 directions ('gradient_mean'). Option 1 directions are steepest-ascent
directions of f at each prompt's own h_0: they say how to raise refusal from that point, not
where the cluster's prompts sit. The other choice, 'diff_in_means', is the cluster's difference
in means: the mean h_0 of its members minus the mean h_0 of the discovery harmless prompts at the
same layer, which is the mean of the members' Option 2 concept vectors before normalising, and
the per-cluster form of Arditi's single direction.

Whichever is chosen, the controls it is judged against are built the same way, so the verdict
compares like with like: the common direction from all clustered discovery rows, and the
size-matched subset means from the same per-row vectors (unit Option 1 directions, or the rows'
h_0 minus the harmless mean). Only discovery rows enter; held-out prompts shape none of these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from refusal_atlas.tasks.clustering.store_run import StoreClustering
from refusal_atlas.tasks.evaluation.split import dataset_heldout

ClusterVector = Literal["gradient_mean", "diff_in_means"]


@dataclass(frozen=True)
class ClusterVectors:
    """directions: one unit vector per cluster [K, D]; common: the unit common direction [D];
    pool: one vector per clustered discovery row [n, D], from which the size-matched subset means
    are drawn; unit_pool: whether each pool row is normalised before a subset is averaged (Option 1
    directions are; differences of h_0 keep their lengths, as in a difference in means)."""

    kind: ClusterVector
    directions: np.ndarray
    common: np.ndarray
    pool: np.ndarray
    unit_pool: bool


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def clustered_directions(store, clustering: StoreClustering) -> np.ndarray:
    """The clustered discovery rows' Option 1 directions [n, D] at the layer each was clustered at."""
    return _at_row_layers(store, clustering, "direction")


def row_mean(h0, rows: np.ndarray, at: int) -> np.ndarray:
    """The float64 mean [D] of h0[rows, at] for a Dask (or NumPy) array h0 [prompt, layer, D],
    accumulated chunk by chunk, so a store of a million rows is never read whole."""
    part = h0[rows, at]
    mean = part.astype(np.float64).mean(axis=0)
    return np.asarray(mean.compute() if hasattr(mean, "compute") else mean)


def harmless_means(h0, stored: list[int], held: np.ndarray, labels: np.ndarray, layers) -> dict[int, np.ndarray]:
    """{layer: mean h_0 [D] of the discovery harmless rows} for h0 [prompt, layer, D] (the store's
    stacked layers `stored`); {} without such rows."""
    rows = np.flatnonzero(~held & (labels == "harmless"))
    if rows.size == 0:
        return {}
    return {int(layer): row_mean(h0, rows, stored.index(int(layer))) for layer in layers}


def discovery_harmless_means(store, clustering: StoreClustering) -> dict[int, np.ndarray]:
    """harmless_means at every layer a clustered row sits at, on the run's own discovery split."""
    cs = clustering.comparison.settings
    ds = store.to_xarray(done_only=True)
    held = dataset_heldout(ds, cs.heldout_fraction, cs.split_seed)
    labels = np.asarray([str(v) for v in np.asarray(ds["label"].values, dtype=object)], dtype=object)
    stored = [int(layer) for layer in store.layers]
    layers = sorted({int(x) for x in clustering.comparison.row_layer})
    return harmless_means(ds["h0"].data, stored, held, labels, layers)


def cluster_vectors(kind: ClusterVector, store, clustering: StoreClustering,
                    harmless_mean: dict[int, np.ndarray]) -> ClusterVectors:
    """The vectors of `kind` for a stored clustering run.

    harmless_mean: {layer: mean h_0 of the discovery harmless rows} at every layer a clustered
    row sits at (harmless_means); only 'diff_in_means' reads it."""
    comparison, result = clustering.comparison, clustering.comparison.result
    if kind == "gradient_mean":
        return ClusterVectors(kind, np.asarray(result.directions, dtype=np.float64), comparison.common,
                              clustered_directions(store, clustering), unit_pool=True)
    layers = [int(x) for x in comparison.row_layer]
    missing = sorted(set(layers) - set(harmless_mean))
    if missing:
        raise ValueError(
            f"cluster_vector 'diff_in_means' needs discovery harmless prompts' h_0 at layer(s) {missing}, and "
            "there are none: add a harmless prompt source, or set evaluation.cluster_vector to 'gradient_mean'.")
    h0 = _at_row_layers(store, clustering, "h0")  # [n, D]
    shifted = h0 - np.stack([harmless_mean[layer] for layer in layers])  # [n, D]
    labels = np.asarray(result.labels)
    directions = np.stack([_unit(shifted[labels == k].mean(axis=0)) for k in range(result.n_clusters)]) \
        if result.n_clusters else np.zeros((0, shifted.shape[1]))
    return ClusterVectors(kind, directions, _unit(shifted.mean(axis=0)), shifted, unit_pool=False)


def _at_row_layers(store, clustering: StoreClustering, variable: str) -> np.ndarray:
    stored = [int(layer) for layer in store.layers]
    rows = clustering.rows.store_rows
    data = store.read_rows(rows, (variable,))[variable]  # [n, L, D]
    position = np.array([stored.index(int(x)) for x in clustering.comparison.row_layer], dtype=np.int64)
    return np.asarray(data[np.arange(rows.size), position], dtype=np.float64)
