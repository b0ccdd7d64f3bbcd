"""From the evaluation's per-prompt numbers and the clustering's significance to the verdict.

Every figure here is measured on held-out prompts (or against a null) and carries an interval:
effects are per-prompt changes in the refusal log-odds or in f (EvalSettings.effect_scale),
signed so that larger means the direction does more (for induce the rise on harmless prompts, for
bypass the fall on harmful prompts); a cluster
direction is compared with the common direction at its layer on the same prompts (a paired
bootstrap) and with the size-matched subset means made for it. `decide` (tasks.evaluation.verdict)
applies the criteria.
"""

from __future__ import annotations

import numpy as np

from refusal_atlas.tasks.evaluation.evaluate import DirectionEffect, EvaluationResult
from refusal_atlas.tasks.evaluation.intervals import Estimate, bootstrap_difference, bootstrap_mean, share_beaten, wilson
from refusal_atlas.tasks.evaluation.specificity import specificity_index
from refusal_atlas.tasks.evaluation.verdict import ClusterEvidence, MeasureEvidence, Verdict, decide

MEASURES = ("induce", "bypass")


def signed(e: DirectionEffect, measure: str, scale: str) -> np.ndarray:
    """Per-prompt effect [n] on `scale` ("log_odds" or "f"), larger = the direction does more."""
    if scale not in ("log_odds", "f"):
        raise ValueError(f"unknown effect scale {scale!r}; use 'log_odds' or 'f'")
    if measure == "induce":
        values = e.induce_dlo_prompts if scale == "log_odds" else e.induce_df_prompts
        return np.asarray(values, dtype=np.float64)
    values = e.bypass_dlo_prompts if scale == "log_odds" else e.bypass_df_prompts
    return -np.asarray(values, dtype=np.float64)


def effect_estimate(e: DirectionEffect, measure: str, scale: str, seed: int = 0) -> Estimate:
    """The mean signed effect on `scale` with its bootstrap interval."""
    return bootstrap_mean(signed(e, measure, scale), seed=seed)


def rate_estimate(rate: float, n: int) -> Estimate:
    """A judged-refusal share as a Wilson interval (NaN without replies)."""
    if not n or not np.isfinite(rate):
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    return wilson(int(round(rate * n)), n)


def kl_estimate(e: DirectionEffect, seed: int = 0) -> Estimate:
    values = np.asarray(e.kl_ablate_prompts, dtype=np.float64)
    return bootstrap_mean(values[np.isfinite(values)], seed=seed)


def common_at(result: EvaluationResult, layer: int) -> DirectionEffect | None:
    commons = result.of_kind("common")
    return next((e for e in commons if e.layer == layer), commons[0] if commons else None)


def own_bypass(result: EvaluationResult, k: int, common_name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Cluster k's and the common direction's fall on k's own held-out prompts [n_own] each
    (the specificity pass's rows, on the evaluation's scale), or None where not measured."""
    spec = result.specificity
    if spec is None or spec.prompt_effects is None or spec.prompt_cluster is None:
        return None
    own = spec.prompt_cluster == k
    if f"cluster {k}" not in spec.rows or common_name not in spec.rows or not own.any():
        return None
    effects = spec.prompt_effects
    return effects[spec.rows.index(f"cluster {k}")][own], effects[spec.rows.index(common_name)][own]


def cluster_evidence(result: EvaluationResult, k: int, seed: int = 0) -> ClusterEvidence:
    """Criterion 4's measures for cluster k. Induce: on the held-out harmless prompts, against
    the common direction (paired) and the size-matched subsets. Bypass: on the cluster's OWN
    held-out prompts (the specificity pass), against the common direction on the same prompts
    and the subsets ablated there. Averaged over every held-out harmful prompt instead, a
    cluster direction that removes all of its own prompts' refusal ties with a common direction
    that removes part of everyone's (on the log-odds, which adds up, exactly so); where no
    specificity was measured, bypass falls back to those mixed prompts."""
    cluster = next(e for e in result.of_kind("cluster") if e.cluster == k)
    common = common_at(result, cluster.layer)
    subsets = [e for e in result.of_kind("subset") if e.cluster == k]
    scale = result.settings.effect_scale
    measures = []
    for measure in MEASURES:
        mine = signed(cluster, measure, scale)
        if common is None or mine.size == 0:
            continue
        own = own_bypass(result, k, common.name) if measure == "bypass" else None
        if own is not None:
            means = result.specificity.subset_means[k] if result.specificity.subset_means else []
            vs_common = bootstrap_difference(own[0], own[1], paired=True, seed=seed)
            share = share_beaten(float(own[0].mean()), means) if means else 0.0
            measures.append(MeasureEvidence("bypass (own prompts)", vs_common, share, len(means)))
            continue
        vs_common = bootstrap_difference(mine, signed(common, measure, scale), paired=True, seed=seed)
        # Subsets scored on this measure only (EvalSettings.controls_bypass=False scores them by
        # induce alone): an unscored null counts as not beaten, never as beaten.
        scored = [signed(s, measure, scale) for s in subsets]
        scored = [v for v in scored if v.size]
        share = share_beaten(float(mine.mean()), [v.mean() for v in scored]) if scored else 0.0
        measures.append(MeasureEvidence(measure, vs_common, share, len(scored)))
    spec = result.specificity
    index = (specificity_index(spec, k, seed) if spec is not None
             else Estimate(float("nan"), float("nan"), float("nan"), 0))
    return ClusterEvidence(k, index, tuple(measures))


def common_estimates(result: EvaluationResult, seed: int = 0) -> dict[str, Estimate]:
    """The common direction's held-out effect per measure (and per layer when there are several)."""
    commons = result.of_kind("common")
    out = {}
    for e in commons:
        suffix = "" if len(commons) == 1 else f" @L{e.layer}"
        for measure in MEASURES:
            out[measure + suffix] = effect_estimate(e, measure, result.settings.effect_scale, seed)
    return out


def verdict_of(result: EvaluationResult | None, significance) -> Verdict | None:
    """The verdict, or None when the evaluation or the clustering's significance was not run."""
    if result is None or significance is None:
        return None
    n = len(result.of_kind("cluster"))
    if significance.null.observed_clusters != n:
        raise ValueError(f"the significance is for {significance.null.observed_clusters} clusters and the "
                         f"evaluation for {n}; they must come from the same clustering run.")
    seed = result.settings.seed
    evidence = [cluster_evidence(result, k, seed) for k in range(n)]
    return decide(significance.null, significance.stability, evidence, common_estimates(result, seed))
