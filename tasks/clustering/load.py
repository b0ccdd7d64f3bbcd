"""A stored clustering run read back as the objects the evaluation and the report use.

The clustering step is cached on (parameters, data version) and its run lives in the store, so
the later steps read it back instead of clustering again. What the store keeps (labels,
probabilities, embeddings, centroids, PCA bases, the common direction, metrics) is enough to
rebuild everything but the fitted HDBSCAN object; `refit_clusterer` rebuilds that on demand
(HDBSCAN is deterministic on the same rows), for assigning new prompts.
"""

from __future__ import annotations

import dataclasses

import dask.array as da
import numpy as np

from refusal_atlas.tasks.clustering.hdbscan_fit import fit_hdbscan
from refusal_atlas.tasks.clustering.spaces import SPACES, ClusterComparison, SpaceClustering, space_clustering
from refusal_atlas.tasks.clustering.geometry import Projection, unit_rows
from refusal_atlas.tasks.clustering.metrics import CategoryAgreement, ClusterMetrics
from refusal_atlas.tasks.clustering.significance import from_attrs
from refusal_atlas.tasks.clustering.store_run import ClusteredRows, StoreClustering
from refusal_atlas.tasks.settings import ClusterSettings


def _float(value) -> float:
    return float("nan") if value is None else float(value)


def metrics_from_dict(data: dict) -> ClusterMetrics:
    """Inverse of ClusterMetrics.as_dict (whose JSON turned NaN into None)."""
    values = dict(data)
    for key in ("noise_share", "mean_within_cosine", "mean_space_within_cosine"):
        values[key] = _float(values[key])
    for key in ("within_cosine", "space_within_cosine"):
        values[key] = [_float(v) for v in values[key]]
    values["direction_cosines"] = [[_float(v) for v in row] for row in values["direction_cosines"]]
    if values.get("categories") is not None:
        cat = dict(values["categories"])
        for key in ("ari", "nmi", "ari_clustered", "nmi_clustered"):
            cat[key] = _float(cat[key])
        values["categories"] = CategoryAgreement(**cat)
    return ClusterMetrics(**values)


def _space(run, space: str, unit: np.ndarray, common: np.ndarray, chosen: str) -> SpaceClustering:
    labels = np.asarray(run[f"{space}_labels"], dtype=np.int64)
    probabilities = np.asarray(run[f"{space}_probabilities"], dtype=np.float64)
    n_clusters = int(labels.max(initial=-1)) + 1
    basis = run.arrays.get(f"{space}_pca_basis")
    projection = Projection(common if space == "residual" else None, None if basis is None else basis[1])
    # Sums are recomputed from the members' unit directions (the report's within-cluster
    # cosines need them); the rest was stored.
    x = unit if space == "raw" else Projection(common, None).apply(unit)
    directions = np.asarray(run[f"{space}_centroids"], dtype=np.float64).reshape(n_clusters, int(unit.shape[1]))
    outliers = run["outlier_scores"] if space == chosen else np.full(labels.size, np.nan)
    fitted = run.arrays.get(f"{space}_fitted")
    return space_clustering(
        space,
        unit,
        x,
        labels,
        probabilities,
        np.asarray(outliers, dtype=np.float64),
        np.ones(labels.size, dtype=bool) if fitted is None else np.asarray(fitted[1], dtype=bool),
        np.asarray(run[f"{space}_embedding"], dtype=np.float64),
        projection,
        clusterer=None,
        directions=directions,
    )


def load_store_clustering(store, name: str) -> StoreClustering:
    """The complete run `name` of a `storage.AtlasStore`, without clustering again."""
    run = store.read_cluster_run(name)
    settings = ClusterSettings(**run.params)
    store_rows = np.asarray(run["prompt_row"], dtype=np.int64)
    row_layer = np.asarray(run["row_layer"], dtype=np.int64)
    layers = [int(x) for x in store.layers]
    data = store.read_rows(store_rows, ("direction", "effect", "prompt_id", "text", "category"))
    position = np.asarray([layers.index(int(layer)) for layer in row_layer])
    picked = data["direction"][np.arange(store_rows.size), position]  # [n, D]
    unit, _ = unit_rows(da.from_array(picked, chunks=(8192, picked.shape[1])))
    common = np.asarray(run["common_direction"], dtype=np.float64)
    chosen = run.attrs.get("space", settings.space)
    spaces = {space: _space(run, space, unit, common, chosen) for space in SPACES}
    comparison = ClusterComparison(
        raw=spaces["raw"],
        residual=spaces["residual"],
        chosen=chosen,
        common=common,
        mean_cosine=float(run.attrs.get("mean_cosine", float("nan"))),
        rows=np.arange(store_rows.size),
        dropped=int(run.attrs.get("dropped_rows", 0)),
        row_layer=row_layer,
        settings=settings,
    )
    rows = ClusteredRows(
        store_rows=store_rows,
        prompt_ids=[str(i) for i in data["prompt_id"]],
        texts=[str(t) for t in data["text"]],
        categories=[str(c) if c else None for c in data["category"]],
        effect=np.asarray(data["effect"]),
        layers=np.asarray(layers),
    )
    metrics = {space: metrics_from_dict(run.metrics[space]) for space in SPACES}
    return StoreClustering(name, comparison, metrics, rows, from_attrs(run.attrs.get("significance")))


def refit_clusterer(result: SpaceClustering, settings: ClusterSettings) -> SpaceClustering:
    """The same clustering with its HDBSCAN object rebuilt from the stored embedding."""
    clusterer = fit_hdbscan(result.embedding[result.fitted], settings)
    return dataclasses.replace(result, clusterer=clusterer)
