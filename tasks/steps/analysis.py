"""After extraction: cluster the store's directions, evaluate the cluster directions, report.

Both steps read and write the store, and return small JSON summaries (what Prefect persists).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from refusal_atlas.tasks.clustering.geometry import ClusteringError
from refusal_atlas.tasks.clustering.load import load_store_clustering
from refusal_atlas.tasks.clustering.spaces import cluster_layer_of
from refusal_atlas.tasks.clustering.store_run import cluster_store, store_run_name
from refusal_atlas.tasks.engine.direction_engine import get_engine
from refusal_atlas.tasks.evaluation.cache import cache_key, cached
from refusal_atlas.tasks.evaluation.evidence import verdict_of
from refusal_atlas.tasks.steps.heldout import evaluate_heldout
from refusal_atlas.storage.handles import writable_store
from refusal_atlas.tasks.model.loading import planted_styles
from refusal_atlas.tasks.organism.mediation import planted_mechanism
from refusal_atlas.tasks.report.build import ReportInputs, build_report, write_report
from refusal_atlas.tasks.report.recovery import planted_cosines, run_recovery
from refusal_atlas.tasks.steps.cluster_vectors import cluster_vectors, discovery_harmless_means
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


def evaluate_and_report(settings: AtlasSettings, store_uri: str, store_uuid: str, run_name: str,
                        run_summary: dict) -> dict:
    """Evaluate the run's cluster directions (when settings.evaluate) and write the report.

    run_summary: what the flow knows of this run (prompt counts), shown at the top of the report.
    """
    store = writable_store(store_uri, store_uuid)
    clustering = load_store_clustering(store, run_name)
    comparison, rows = clustering.comparison, clustering.rows
    evaluation, reused = None, False
    report_dir = default_report_dir(settings)
    if settings.evaluate:
        # The evaluation reads only the run's directions and the store's held-out rows, so it is
        # kept on disk under a key of those, its settings and its code: a rerun with nothing new
        # reads it back instead of scoring every candidate again.
        key = cache_key(store.data_version(), run_name, settings.evaluation, settings.model, settings.directions)
        evaluation, reused = cached(
            report_dir / "evaluation-cache", key,
            lambda: evaluate_heldout(settings, store, clustering,
                                     get_engine(settings.model, settings.directions, settings.engine)),
        )
    verdict = verdict_of(evaluation, clustering.significance)
    recovery = _recovery(settings, store, clustering, evaluation, verdict)
    best = store.read_rows(rows.store_rows, ("best_layer",))["best_layer"]
    details = {
        "store": store.uri,
        "model": f"{store.spec.model_id} (fingerprint {store.spec.model_fingerprint})",
        "clustering run": run_name,
        **{k: str(v) for k, v in run_summary.items()},
    }
    report = build_report(ReportInputs(
        comparison, clustering.metrics, rows.texts, rows.categories, rows.effect, list(rows.layers),
        np.asarray(best), evaluation, details=details, verdict=verdict, significance=clustering.significance,
        recovery=recovery,
    ))
    path = write_report(report, report_dir / "report.html")
    return {
        "html": str(path.resolve()),
        "markdown": report.markdown,
        "cluster_rows": report.cluster_rows,
        "findings": report.findings,
        "verdict": report.verdict,
        "recovery": recovery,
        "evaluation_reused": reused,
    }


def _recovery(settings: AtlasSettings, store, clustering, evaluation, verdict) -> dict | None:
    """The recovery section when the model is a refusal model organism (its planted styles are
    known), else None."""
    styles = planted_styles(settings.model.name)
    if styles is None:
        return None
    comparison, rows = clustering.comparison, clustering.rows
    ds = store.to_xarray(done_only=True)
    category_of = {str(t): (str(c) if c else None)
                   for t, c in zip(np.asarray(ds["text"].values, dtype=object), np.asarray(ds["category"].values, dtype=object))}
    headline = None if verdict is None else {"summary": verdict.headline().removeprefix("Verdict: "),
                                            "n_directions": verdict.count, "supported": list(verdict.supported)}
    mechanism = planted_mechanism(settings.model.name)
    planted = None
    if mechanism is not None:
        directions, groups, layer = mechanism
        result = comparison.result
        # The common direction mixes the layers when there are several; compared only at one.
        common = comparison.common if np.all(comparison.row_layer == layer) else None
        at = cluster_layer_of(comparison, result)
        planted = planted_cosines(result.directions, at, common, directions.numpy(), groups, layer,
                                  suffix=" (Option 1 mean)")
        # The same clusters through their difference in means (evaluation.cluster_vector's other
        # choice), whichever the evaluation used: the two can point very differently.
        means = discovery_harmless_means(store, clustering)
        if means:
            dim = cluster_vectors("diff_in_means", store, clustering, means)
            by_dim = planted_cosines(dim.directions, at, dim.common if common is not None else None,
                                     directions.numpy(), groups, layer, suffix=" (difference in means)")
            planted["rows"].update(by_dim["rows"])
    return run_recovery(comparison.result.labels, list(rows.categories), evaluation, styles, category_of, headline,
                        planted)


__all__ = ["ClusteringError", "cluster_step", "evaluate_and_report", "default_report_dir"]
