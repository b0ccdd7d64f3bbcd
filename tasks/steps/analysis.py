"""After extraction: cluster the store's directions, evaluate the cluster directions, report.

Both steps read and write the store, and return small JSON summaries (what Prefect persists).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from refusal_atlas.tasks.clustering.spaces import cluster_layer_of
from refusal_atlas.tasks.clustering.geometry import ClusteringError
from refusal_atlas.tasks.clustering.load import load_store_clustering
from refusal_atlas.tasks.clustering.store_run import cluster_store, store_run_name
from refusal_atlas.tasks.engine.direction_engine import get_engine
from refusal_atlas.tasks.evaluation.evaluate import build_candidates, evaluate_directions
from refusal_atlas.storage.handles import writable_store
from refusal_atlas.tasks.report.build import ReportInputs, build_report, write_report
from refusal_atlas.tasks.settings import AtlasSettings, ClusterSettings


def cluster_step(store_uri: str, store_uuid: str, data_version: str, settings: ClusterSettings) -> dict:
    """Cluster the done rows (unless this run is already in the store) and summarise it.

    The run's name is a hash of the parameters and the data version, so an identical run is
    found rather than recomputed; a run that failed half way was never marked complete and is
    redone.
    """
    store = writable_store(store_uri, store_uuid)
    if store.data_version() != data_version:
        raise RuntimeError(
            f"{store_uri} changed after its rows were computed (data version {store.data_version()}, "
            f"expected {data_version}): another run is writing to it. Rerun once it has finished."
        )
    name = store_run_name(store, settings)
    if name not in store.list_cluster_runs():
        cluster_store(store, settings)
    run = store.read_cluster_run(name)
    return {
        "run": name,
        "data_version": run.data_version,
        "chosen": run.attrs.get("space"),
        "spaces": {
            space: {k: m.get(k) for k in ("n_points", "n_clusters", "noise_share", "sizes")}
            for space, m in run.metrics.items()
        },
    }


def default_report_dir(settings: AtlasSettings) -> Path:
    if settings.report_dir:
        return Path(settings.report_dir)
    if "://" in settings.store and not settings.store.startswith("file://"):
        return Path("runs") / "reports"
    return Path(settings.store.removeprefix("file://").rstrip("/") + ".report")


def _texts(store, label: str) -> list[str]:
    ds = store.to_xarray(done_only=True)
    labels = np.asarray(ds["label"].values, dtype=object)
    texts = np.asarray(ds["text"].values, dtype=object)
    return [str(t) for t in texts[labels == label]]


def _baseline(store) -> dict[int, np.ndarray] | None:
    try:
        concept = store.read_concept()
    except KeyError:
        return None
    diff = np.asarray(concept["diff_in_means"].values)
    if not np.isfinite(diff).all():
        return None
    return {int(layer): diff[i] for i, layer in enumerate(store.layers)}


def evaluate_and_report(settings: AtlasSettings, store_uri: str, store_uuid: str, run_name: str,
                        run_summary: dict) -> dict:
    """Evaluate the run's cluster directions (when settings.evaluate) and write the report.

    run_summary: what the flow knows of this run (prompt counts), shown at the top of the report.
    """
    store = writable_store(store_uri, store_uuid)
    clustering = load_store_clustering(store, run_name)
    comparison, rows = clustering.comparison, clustering.rows
    result = comparison.result
    evaluation = None
    if settings.evaluate:
        engine = get_engine(settings.model, settings.directions, settings.engine)
        middle = int(np.median(comparison.row_layer)) if comparison.row_layer.size else engine.layers[0]
        candidates = build_candidates(
            result.directions, cluster_layer_of(comparison, result), _baseline(store),
            settings.evaluation.n_random, settings.evaluation.seed, default_layers=[middle],
        )
        members = [[rows.texts[i] for i in _member_order(result, k)] for k in range(result.n_clusters)]
        evaluation = evaluate_directions(
            engine, candidates, _texts(store, "harmless"), _texts(store, "harmful"), members, settings.evaluation
        )
    best = store.read_rows(rows.store_rows, ("best_layer",))["best_layer"]
    details = {
        "store": store.uri,
        "model": f"{store.spec.model_id} (fingerprint {store.spec.model_fingerprint})",
        "clustering run": run_name,
        **{k: str(v) for k, v in run_summary.items()},
    }
    report = build_report(ReportInputs(
        comparison, clustering.metrics, rows.texts, rows.categories, rows.effect, list(rows.layers),
        np.asarray(best), evaluation, details=details,
    ))
    path = write_report(report, default_report_dir(settings) / "report.html")
    return {
        "html": str(path.resolve()),
        "markdown": report.markdown,
        "cluster_rows": report.cluster_rows,
        "findings": report.findings,
    }


def _member_order(result, k: int) -> list[int]:
    """Cluster k's member rows, its exemplars first."""
    first = [int(i) for i in result.exemplars[k]]
    rest = [int(i) for i in np.flatnonzero(result.labels == k) if int(i) not in set(first)]
    return first + rest


__all__ = ["ClusteringError", "cluster_step", "evaluate_and_report", "default_report_dir"]
