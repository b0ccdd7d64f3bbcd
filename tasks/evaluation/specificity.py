"""Specificity on held-out prompts: does each cluster direction carry its own prompts' refusal?

The measure is bypass: a direction is ablated (projected out everywhere, as in the bypass
measure) on held-out harmful prompts assigned to each cluster, and the effect is the fall in the
refusal log-odds or in f (EvalSettings.effect_scale; the result's `scale` says which).
Ablation asks the causal question directly (does this prompt's refusal run through this
direction?), and it is the measure in which two planted directions separate: removing
direction A removes the refusal of A's prompts and leaves B's. Adding a direction (as the
earlier, in-sample matrix did) raises f on every prompt, specific or not.

The index is an interaction contrast, not a plain own-minus-other difference. For cluster k and
each held-out prompt p, d_k(p) = e_k(p) - e_rest(p): the effect of k's direction minus the mean
effect of the other clusters' directions on the same prompt (with one cluster, the common
direction's). The index is mean d_k over k's own prompts minus mean d_k over the other clusters'
prompts, with an unpaired bootstrap interval. Differencing against the other directions on the
same prompt removes how susceptible a prompt set is as a whole (a plain own-minus-other would
call a cluster "specific" when its prompts just refuse more), and differencing across prompt sets
removes a direction that is merely stronger everywhere (a plain own-direction-minus-others would
call that "specific"). With one shared direction both cancel, and the interval covers zero.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from refusal_atlas.tasks.evaluation.controls import Candidate
from refusal_atlas.tasks.evaluation.intervals import Estimate, bootstrap_difference


@dataclass(frozen=True)
class Specificity:
    """matrix [R, K]: mean fall on `scale` (refusal log-odds or f) when row direction r is
    ablated on cluster j's held-out prompts; prompt_effects [R, m]: the same per prompt;
    prompt_cluster [m]: each prompt's cluster (the columns); n_prompts [K]."""

    matrix: np.ndarray
    rows: list[str]
    columns: list[str]
    n_prompts: list[int]
    prompt_effects: np.ndarray | None = field(default=None, repr=False)
    prompt_cluster: np.ndarray | None = field(default=None, repr=False)
    scale: str = "f"
    # Per cluster k, the mean fall on k's own held-out prompts when each of k's size-matched
    # subset means is ablated: the null of the verdict's bypass criterion (empty lists when the
    # subsets were not scored, EvalSettings.controls_bypass off).
    subset_means: list[list[float]] | None = field(default=None, repr=False)


def measure_specificity(run, candidates: Sequence[Candidate], members: Sequence[Sequence[str]],
                        scales: Mapping[int, float]) -> Specificity | None:
    """Rows: each cluster direction, the common direction(s), the baseline(s) and the mean over
    random controls per layer; columns: the clusters' held-out prompts (at most n_specificity
    each; a cluster without held-out prompts gets a NaN column, and None comes back when no
    cluster has any). With controls_bypass, also each cluster's size-matched subset means
    ablated on its own prompts (subset_means). run: a measures.MeasureRun (its model lock held
    by the caller)."""
    per_cluster = [list(texts[: run.s.n_specificity]) for texts in members]
    if not any(per_cluster):
        return None
    flat = [run.render(t) for texts in per_cluster for t in texts]
    cluster_of = np.repeat(np.arange(len(per_cluster)), [len(g) for g in per_cluster])
    layer = min(scales)  # ablation acts at every layer; f is read at one (the same for all rows)
    scale = run.s.effect_scale
    base = getattr(run.score(flat, layer), scale)

    def fall(c: Candidate) -> np.ndarray:
        return base - getattr(run.score(flat, layer, run.ablator(c)), scale)

    names, rows = [], []
    for c in candidates:
        if c.kind in ("cluster", "common", "baseline"):
            names.append(c.name)
            rows.append(fall(c))
    layers = sorted(scales)
    for at in layers:
        # The random directions with replies only (n_random_generate of them): this row is context,
        # and each random costs an ablated pass over every cluster's held-out prompts.
        randoms = [fall(c) for c in candidates if c.kind == "random" and c.layer == at and c.generate]
        if randoms:
            names.append("random (mean)" if len(layers) == 1 else f"random (mean) @L{at}")
            rows.append(np.mean(randoms, axis=0))
    effects = np.array(rows)
    k = len(per_cluster)
    matrix = np.array([[r[cluster_of == j].mean() if (cluster_of == j).any() else np.nan for j in range(k)]
                       for r in effects])
    subset_means: list[list[float]] = [[] for _ in range(k)]
    if run.s.controls_bypass:
        # Each subset mean only on its own cluster's prompts: that is where the verdict compares a
        # cluster direction's bypass with the common direction's and with same-size groups'.
        for j in range(k):
            own = np.flatnonzero(cluster_of == j)
            if own.size == 0:
                continue
            rendered = [flat[i] for i in own]
            for c in candidates:
                if c.kind == "subset" and c.cluster == j:
                    after = getattr(run.score(rendered, layer, run.ablator(c)), scale)
                    subset_means[j].append(float((base[own] - after).mean()))
    return Specificity(matrix, names, [f"cluster {j}" for j in range(k)], [len(g) for g in per_cluster],
                       effects, cluster_of, scale, subset_means)


def specificity_index(spec: Specificity, k: int, seed: int = 0) -> Estimate:
    """Cluster k's interaction contrast (module docstring) with its bootstrap interval; NaN when
    the per-prompt effects are missing or no other cluster has held-out prompts."""
    nan = Estimate(float("nan"), float("nan"), float("nan"), 0)
    if spec.prompt_effects is None or spec.prompt_cluster is None:
        return nan
    names = spec.rows
    clusters = [names.index(f"cluster {j}") for j in range(len(spec.columns)) if f"cluster {j}" in names]
    if k >= len(clusters):
        return nan
    e = spec.prompt_effects
    others = [i for j, i in enumerate(clusters) if j != k]
    if others:
        rest = e[others].mean(axis=0)
    else:
        common = [i for i, name in enumerate(names) if name.startswith("common")]
        if not common:
            return nan
        rest = e[common[0]]
    d = e[clusters[k]] - rest
    own = spec.prompt_cluster == k
    if not own.any() or own.all():
        return nan
    return bootstrap_difference(d[own], d[~own], paired=False, seed=seed)
