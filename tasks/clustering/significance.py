"""The clustering's significance, computed once in the clustering step and kept with the run.

Three checks of issue 14 belong to the clustering, not to the evaluation: the null model
(is each cluster more persistent than chance?), per-cluster bootstrap stability, and the h_0
control (do the clusters only mirror the prompts' activations?). Each refits the pipeline 20 or
more times, so they run once, when the clustering is computed, and are stored in the run's
attributes as JSON; the evaluation and the report read them back from there. The maths is in
`null_model`, `stability` and `h0_control`; this module only runs them and (de)serialises.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from refusal_atlas.tasks.clustering.h0_control import H0Control, h0_control
from refusal_atlas.tasks.clustering.null_model import NullModelResult, null_model
from refusal_atlas.tasks.clustering.spaces import ClusterComparison
from refusal_atlas.tasks.clustering.stability import ClusterStability, bootstrap_stability
from refusal_atlas.tasks.settings import ClusterSettings


@dataclass(frozen=True)
class Significance:
    """The chosen space's null model, per-cluster stability and h_0 control (None if not run)."""

    null: NullModelResult
    stability: ClusterStability
    h0: H0Control | None


def _bar(desc: str, total: int):
    # Each step is a whole clustering (PCA and HDBSCAN), about a second on a large run: a bar
    # says the step is alive where it would otherwise print nothing for half a minute.
    return lambda it: tqdm(it, total=total, desc=desc, unit="set", file=sys.stderr, leave=False)


def compute_significance(
    comparison: ClusterComparison, directions: np.ndarray, h0: np.ndarray | None, settings: ClusterSettings,
) -> Significance | None:
    """directions [n, D] and h0 [n, D] (or None): the clustered rows, in the comparison's order."""
    if settings.null_sets < 1:
        return None
    result = comparison.result
    n = settings.null_sets
    null = null_model(directions, settings, comparison.chosen, n_null=n, observed=result,
                      progress=_bar("null model", n))
    stability = bootstrap_stability(directions, result.labels, settings, comparison.chosen, n_bootstraps=n,
                                    progress=_bar("stability", n))
    control = None
    if h0 is not None and np.isfinite(h0).all() and np.linalg.norm(h0, axis=1).min() > 0:
        control = h0_control(h0, result.labels, settings, comparison.chosen)
    return Significance(null, stability, control)


def _list(a) -> list:
    return [None if isinstance(v, float) and not np.isfinite(v) else v for v in np.asarray(a).tolist()]


def _array(values, dtype=np.float64) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=dtype)


def to_attrs(sig: Significance) -> dict:
    """JSON-ready: NaN becomes None, arrays become lists."""
    n, s = sig.null, sig.stability
    out = {
        "null": {
            "space": n.space, "n_rows": n.n_rows, "observed_clusters": n.observed_clusters,
            "observed_noise_share": n.observed_noise_share, "null_clusters": _list(n.null_clusters),
            "null_noise_share": _list(n.null_noise_share), "p_clusters": n.p_clusters, "p_noise": n.p_noise,
            "null_max_persistence": _list(n.null_max_persistence), "persistence": _list(n.persistence),
            "p_persistence": _list(n.p_persistence), "rank": n.rank,
        },
        "stability": {"jaccard": [_list(row) for row in s.jaccard], "threshold": s.threshold,
                      "fates": None if s.fates is None else [[int(v) for v in row] for row in s.fates]},
        "h0": None,
    }
    if sig.h0 is not None:
        h = sig.h0
        out["h0"] = {"labels": _list(h.labels), "n_clusters": h.n_clusters, "noise_share": h.noise_share,
                     "ari": h.ari, "ari_clustered": None if not np.isfinite(h.ari_clustered) else h.ari_clustered,
                     "n_clustered": h.n_clustered}
    return out


def from_attrs(data: dict | None) -> Significance | None:
    """Inverse of to_attrs; None for a run stored without significance."""
    if not data:
        return None
    n = dict(data["null"])
    for key in ("null_noise_share", "null_max_persistence", "persistence", "p_persistence"):
        n[key] = _array(n[key])
    n["null_clusters"] = _array(n["null_clusters"], np.int64)
    null = NullModelResult(**n)
    rows = data["stability"]["jaccard"]
    # Without clusters there are no rows, and reshape cannot infer a width from nothing.
    jaccard = (np.array([_array(row) for row in rows], dtype=np.float64) if rows
               else np.zeros((0, null.n_null)))
    threshold = float(data["stability"]["threshold"])
    median = np.array([np.nanmedian(r) if np.isfinite(r).any() else np.nan for r in jaccard])
    # Runs stored before fates were recorded have none; they read as None, not as zeros.
    fates = data["stability"].get("fates")
    fates = None if fates is None else np.array(fates, dtype=np.int64).reshape(jaccard.shape)
    stability = ClusterStability(jaccard, median, median >= threshold, threshold, fates)
    h = data.get("h0")
    control = None
    if h:
        control = H0Control(labels=_array(h["labels"], np.int64), n_clusters=int(h["n_clusters"]),
                            noise_share=float(h["noise_share"]), ari=float(h["ari"]),
                            ari_clustered=float("nan") if h["ari_clustered"] is None else float(h["ari_clustered"]),
                            n_clustered=int(h["n_clustered"]))
    return Significance(null, stability, control)
