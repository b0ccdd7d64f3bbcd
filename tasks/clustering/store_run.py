"""The clustering step against the atlas store: read the rows, cluster, write the run.

The maths lives in `tasks.cluster` and `tasks.cluster_metrics`; this module only selects the
rows (done, with the asked labels), reads them as Dask arrays, and writes the result as a
complete-last cluster run named by the parameters and the data version (so the flow can look a
run up before computing it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refusal_atlas.tasks.clustering.spaces import SPACES, ClusterComparison, cluster_directions, cluster_layer_of
from refusal_atlas.tasks.clustering.geometry import ClusteringError, select_layer
from refusal_atlas.tasks.clustering.metrics import ClusterMetrics, compute_metrics
from refusal_atlas.tasks.clustering.significance import Significance, compute_significance, to_attrs
from refusal_atlas.tasks.evaluation.split import heldout_mask
from refusal_atlas.tasks.settings import ClusterSettings


@dataclass(frozen=True)
class ClusteredRows:
    """What the report needs about the clustered rows, in the comparison's row order."""

    store_rows: np.ndarray
    prompt_ids: list[str]
    texts: list[str]
    categories: list[str | None]
    effect: np.ndarray  # [n, L]: the store's effect of each clustered row at every stored layer
    layers: np.ndarray  # [L]: model layer of each stored layer position


@dataclass(frozen=True)
class StoreClustering:
    run_name: str
    comparison: ClusterComparison
    metrics: dict[str, ClusterMetrics]
    rows: ClusteredRows
    significance: Significance | None = None


def discovery_rows(ds, settings: ClusterSettings) -> np.ndarray:
    """Indices of the done rows to cluster: a label in settings.labels and on the discovery side
    of the split (tasks.evaluation.split), so no held-out prompt shapes a cluster."""
    labels = np.asarray(ds["label"].values, dtype=object)
    chosen = np.flatnonzero(np.isin(labels, list(settings.labels)))
    held = heldout_mask([str(i) for i in np.asarray(ds["prompt_id"].values)[chosen]], settings.heldout_fraction,
                        settings.split_seed, [str(v) for v in labels[chosen]],
                        [c if c else None for c in np.asarray(ds["category"].values, dtype=object)[chosen]])
    return chosen[~held]


def run_params(settings: ClusterSettings) -> dict:
    """The parameters a cluster run is named and cached by."""
    return settings.model_dump(mode="json")


def cluster_store(
    store,
    settings: ClusterSettings,
    n_jobs: int | None = None,
    write: bool = True,
) -> StoreClustering:
    """Cluster the store's done rows whose label is in settings.labels, and write the run.

    store: a `storage.AtlasStore`. Returns the comparison (raw and residual), each space's
    metrics and the clustered rows' texts and categories.
    """
    ds = store.to_xarray(done_only=True)
    chosen = discovery_rows(ds, settings)
    if chosen.size == 0:
        raise ClusteringError(
            f"no done prompts have a label in {settings.labels} on the discovery side of the split (done rows: "
            f"{ds.sizes.get('prompt', 0)}); compute directions first, change the labels to cluster, or hold out "
            "fewer prompts (heldout_fraction)."
        )
    direction = ds["direction"].data[chosen]  # [n, L, D] dask
    best = np.asarray(ds["best_layer"].values)[chosen]
    picked, row_layer = select_layer(direction, store.layers, settings.layer, best)
    comparison = cluster_directions(picked, settings, row_layer, n_jobs)
    kept = chosen[comparison.rows]
    categories = [c if c else None for c in np.asarray(ds["category"].values, dtype=object)[kept]]
    rows = ClusteredRows(
        store_rows=np.asarray(ds["prompt"].values)[kept],
        prompt_ids=[str(i) for i in np.asarray(ds["prompt_id"].values)[kept]],
        texts=[str(t) for t in np.asarray(ds["text"].values, dtype=object)[kept]],
        categories=categories,
        effect=np.asarray(ds["effect"].data[kept].compute()),
        layers=np.asarray(store.layers),
    )
    metrics = {space: compute_metrics(comparison.space(space), settings, categories, n_jobs=n_jobs)
               for space in SPACES}
    clustered = np.asarray(picked[comparison.rows])
    stored = [int(layer) for layer in store.layers]
    position = np.array([stored.index(int(layer)) for layer in comparison.row_layer], dtype=np.int64)
    h0 = np.asarray(ds["h0"].data[kept].compute())[np.arange(kept.size), position] if kept.size else None
    significance = compute_significance(comparison, clustered, h0, settings)
    name = store_run_name(store, settings)
    if write:
        arrays, attrs = run_arrays(comparison, rows, metrics, store.data_version())
        attrs["significance"] = None if significance is None else to_attrs(significance)
        store.write_cluster_run(name, arrays, attrs)
    return StoreClustering(name, comparison, metrics, rows, significance)


def store_run_name(store, settings: ClusterSettings) -> str:
    from refusal_atlas.storage import cluster_run_name

    return cluster_run_name(run_params(settings), store.data_version())


def run_arrays(comparison: ClusterComparison, rows: ClusteredRows, metrics: dict[str, ClusterMetrics],
               data_version: str) -> tuple[dict, dict]:
    """The run's arrays ({name: (dims, values)}) and attributes.

    The standard arrays hold the chosen space; both spaces are also stored under raw_* and
    residual_*, with the PCA basis and common direction needed to assign new prompts (the
    HDBSCAN model itself is refitted from the stored embedding: it is deterministic).
    """
    chosen = comparison.result
    arrays: dict[str, tuple] = {
        "prompt_row": (("member",), rows.store_rows),
        "labels": (("member",), chosen.labels),
        "probabilities": (("member",), chosen.probabilities),
        "outlier_scores": (("member",), chosen.outlier_scores),
        "centroids": (("cluster", "hidden"), chosen.directions),
        "row_layer": (("member",), comparison.row_layer),
        "common_direction": (("hidden",), comparison.common),
    }
    for space in SPACES:
        result = comparison.space(space)
        arrays[f"{space}_labels"] = (("member",), result.labels)
        arrays[f"{space}_probabilities"] = (("member",), result.probabilities)
        arrays[f"{space}_fitted"] = (("member",), result.fitted)
        arrays[f"{space}_centroids"] = ((f"{space}_cluster", "hidden"), result.directions)
        arrays[f"{space}_cluster_layer"] = ((f"{space}_cluster",), cluster_layer_of(comparison, result))
        arrays[f"{space}_embedding"] = (("member", f"{space}_component"), result.embedding)
        if result.projection.basis is not None:
            arrays[f"{space}_pca_basis"] = ((f"{space}_component", "hidden"), result.projection.basis)
    attrs = {
        "params": run_params(comparison.settings),
        "data_version": data_version,
        "metrics": {space: m.as_dict() for space, m in metrics.items()},
        "space": comparison.chosen,
        "mean_cosine": comparison.mean_cosine,
        "dropped_rows": comparison.dropped,
    }
    return arrays, attrs
