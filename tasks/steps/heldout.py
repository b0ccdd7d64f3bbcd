"""The held-out evaluation of a stored clustering run: which prompts, which directions.

Reads the store, never the model's activations afresh: the held-out prompts are the done rows
on the held-out side of the run's split (tasks.evaluation.split); the ones with a clustered
label are assigned to the discovery clusters with HDBSCAN's prediction data (approximate_predict
on the refitted clusterer, through the run's own common direction and PCA basis), never by
refitting. The difference in means is recomputed from the discovery rows' h_0 only, so no
held-out prompt shapes any direction it is used to test; so are the cluster vectors and their
controls (tasks.steps.cluster_vectors: Option 1 means, or per-cluster differences in means).
"""

from __future__ import annotations

import numpy as np

from refusal_atlas.tasks.clustering.load import refit_clusterer
from refusal_atlas.tasks.clustering.spaces import approximate_predict, cluster_layer_of
from refusal_atlas.tasks.clustering.store_run import StoreClustering
from refusal_atlas.tasks.evaluation.evaluate import EvaluationResult, build_candidates, evaluate_directions
from refusal_atlas.tasks.evaluation.split import dataset_heldout
from refusal_atlas.tasks.settings import AtlasSettings
from refusal_atlas.tasks.steps.cluster_vectors import cluster_vectors, harmless_means, row_mean


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def evaluate_heldout(settings: AtlasSettings, store, clustering: StoreClustering, engine) -> EvaluationResult:
    comparison, result = clustering.comparison, clustering.comparison.result
    cs = comparison.settings
    ds = store.to_xarray(done_only=True)
    texts = [str(t) for t in np.asarray(ds["text"].values, dtype=object)]
    held = dataset_heldout(ds, cs.heldout_fraction, cs.split_seed)
    label = np.asarray([str(v) for v in np.asarray(ds["label"].values, dtype=object)], dtype=object)
    stored = [int(layer) for layer in store.layers]
    layers = cluster_layer_of(comparison, result)
    middle = int(np.median(comparison.row_layer)) if comparison.row_layer.size else stored[len(stored) // 2]
    wanted = sorted({int(x) for x in layers} or {middle})
    # The difference in means from the discovery rows' h_0 at each layer a candidate sits at.
    row_layers = {int(x) for x in comparison.row_layer}
    h0 = ds["h0"].data
    harmless_mean = harmless_means(h0, stored, held, label, sorted(set(wanted) | row_layers))
    harmful = np.flatnonzero(~held & (label == "harmful"))
    baseline = {}
    if harmful.size and harmless_mean:
        for layer in wanted:
            diff = row_mean(h0, harmful, stored.index(layer)) - harmless_mean[layer]
            if np.isfinite(diff).all() and np.linalg.norm(diff) > 0:
                baseline[layer] = _unit(diff)
    es = settings.evaluation
    vectors = cluster_vectors(es.cluster_vector, store, clustering, harmless_mean)
    candidates = build_candidates(
        vectors.directions, layers, baseline if len(baseline) == len(wanted) else None, es.n_random, es.seed,
        default_layers=[middle], common=vectors.common, subset_pool=vectors.pool, cluster_sizes=list(result.sizes),
        n_subsets=es.n_subsets, n_random_generate=es.n_random_generate, unit_pool=vectors.unit_pool,
    )
    held_harmless = [texts[i] for i in np.flatnonzero(held & (label == "harmless"))]
    held_harmful = [texts[i] for i in np.flatnonzero(held & (label == "harmful"))]
    members = _assign(ds, store, clustering, held, texts) if result.n_clusters else []
    return evaluate_directions(engine, candidates, held_harmless, held_harmful, members, es)


def _assign(ds, store, clustering: StoreClustering, held: np.ndarray, texts: list[str]) -> list[list[str]]:
    """Per cluster, the held-out prompts with a clustered label that HDBSCAN assigns to it."""
    comparison = clustering.comparison
    cs = comparison.settings
    label = np.asarray(ds["label"].values, dtype=object)
    rows = np.flatnonzero(held & np.isin(label, list(cs.labels)))
    n_clusters = comparison.result.n_clusters
    if rows.size == 0:
        return [[] for _ in range(n_clusters)]
    stored = [int(layer) for layer in store.layers]
    direction = np.asarray(ds["direction"].data[rows].compute(), dtype=np.float64)  # [m, L, D]
    if cs.layer == "best":
        best = np.asarray(ds["best_layer"].values)[rows]
        position = np.array([stored.index(int(b)) if int(b) in stored else 0 for b in best])
    else:
        layer = stored[len(stored) // 2] if cs.layer is None else int(cs.layer)
        position = np.full(rows.size, stored.index(layer))
    picked = direction[np.arange(rows.size), position]
    fitted = refit_clusterer(comparison.result, cs)
    found, _ = approximate_predict(fitted, picked)
    return [[texts[i] for i, k in zip(rows, found) if k == j] for j in range(n_clusters)]
