"""Evaluating cluster directions against the common direction and the other controls.

For every candidate direction c (unit, at a layer L; see tasks.evaluation.controls for the
candidates), on held-out prompts:

- induce: add alpha * s_L * c to layer L's output at every position on harmless prompts, where
  s_L is the mean ||h_0|| of those prompts at L (`EvalSettings.alpha`); the change in f per
  prompt, in the refusal log-odds, and (for candidates with `generate`) the share of greedy
  replies judged refusals (substring and strict);
- bypass: project c out of every block's input and every attention and MLP output on harmful
  prompts (Arditi's directional ablation); the same measures;
- side effects: KL(base || ablated) of the next-token distribution, averaged over the first
  `kl_tokens` positions of the unmodified model's greedy replies to harmless prompts,
  teacher-forced, one value per prompt (not for subset controls, which no criterion reads it of);
- specificity: the fall in f when each cluster direction is ablated on each cluster's held-out
  prompts (tasks.evaluation.specificity).

Per-prompt changes are kept, so every mean can carry a bootstrap interval and a cluster
direction can be compared with the common direction on the same prompts (tasks.evaluation.
evidence). Candidates at one layer all get the same norm. Nothing here assumes the cluster
directions work: the result holds the numbers for every candidate, and the verdict decides.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from refusal_atlas.tasks.evaluation.controls import Candidate, EvaluationError, Kind, build_candidates
from refusal_atlas.tasks.evaluation.judge import JudgeSummary
from refusal_atlas.tasks.evaluation.measures import Judged, MeasureRun, mean_and_sem
from refusal_atlas.tasks.evaluation.settings import EvalSettings
from refusal_atlas.tasks.evaluation.specificity import Specificity, measure_specificity

@dataclass(frozen=True)
class DirectionEffect:
    """One candidate's numbers. d*: mean change against the unmodified model (with its standard
    error for f); *_substring / *_strict: refusal shares of the greedy replies under the
    intervention (NaN without generation); kinds: the strict judge's counts; kl_ablate and
    kl_ablate_max: the mean and largest of kl_ablate_prompts, the per-prompt mean KL over the
    base model's first reply tokens (in the order of the sampled harmless prompts)."""

    name: str
    kind: Kind
    layer: int
    cluster: int | None
    scale: float
    induce_df: float
    induce_df_sem: float
    induce_dlog_odds: float
    induce_substring: float
    induce_strict: float
    induce_kinds: dict
    bypass_df: float
    bypass_df_sem: float
    bypass_dlog_odds: float
    bypass_substring: float
    bypass_strict: float
    bypass_kinds: dict
    kl_ablate: float
    kl_ablate_max: float
    induce_examples: list[str]
    bypass_examples: list[str]
    n_judged: int = 0
    kl_ablate_prompts: tuple[float, ...] = ()
    induce_df_prompts: tuple[float, ...] = ()
    bypass_df_prompts: tuple[float, ...] = ()
    # The same per-prompt changes on the log-odds scale (EvalSettings.effect_scale).
    induce_dlo_prompts: tuple[float, ...] = ()
    bypass_dlo_prompts: tuple[float, ...] = ()
    # Every judged reply, in the order of BaseMeasures.harmless_prompts / harmful_prompts (the
    # organism's recovery section reads which refusal style each one opens with).
    induce_replies: tuple[str, ...] = ()
    bypass_replies: tuple[str, ...] = ()


@dataclass(frozen=True)
class EvaluationResult:
    """Every candidate direction's effects, the unmodified model's measures beside them, the
    specificity table (None when not measured) and the steering scale used at each layer."""

    settings: EvalSettings
    base: BaseMeasures
    effects: list[DirectionEffect]
    specificity: Specificity | None
    scales: dict[int, float]

    def of_kind(self, kind: Kind) -> list[DirectionEffect]:
        return [e for e in self.effects if e.kind == kind]


@dataclass(frozen=True)
class BaseMeasures:
    """The unmodified model on the evaluation prompts (means; judge summaries of its replies)."""

    harmless_f: float
    harmless_log_odds: float
    harmful_f: float
    harmful_log_odds: float
    harmless_judge: JudgeSummary | None
    harmful_judge: JudgeSummary | None
    n_harmless: int
    n_harmful: int
    n_generate: int
    harmless_examples: list[str]
    harmful_examples: list[str]
    # The judged prompts (the first n_generate of each sample) and the unmodified model's replies.
    harmless_prompts: tuple[str, ...] = ()
    harmful_prompts: tuple[str, ...] = ()
    harmless_replies: tuple[str, ...] = ()
    harmful_replies: tuple[str, ...] = ()


def sample(texts: Sequence[str], n: int, seed: int) -> list[str]:
    """At most n texts, a seeded sample in a seeded random order.

    The order matters: the first n_generate of the sample are the ones whose replies are judged.
    Kept in input order, that prefix was the sample's earliest texts, so a prompt file sorted by
    category (the organism's held-out prompts are medical, then legal, then financial) had only
    its first categories judged. In a random order every prefix is itself a random sample.
    """
    order = np.random.default_rng(seed).permutation(len(texts))[:n]
    return [texts[int(i)] for i in order]


def evaluate_directions(
    engine,
    candidates: Sequence[Candidate],
    harmless: Sequence[str],
    harmful: Sequence[str],
    members: Sequence[Sequence[str]] = (),
    settings: EvalSettings | None = None,
) -> EvaluationResult:
    """Run induce, bypass, side effects and specificity for every candidate.

    engine: a `DirectionEngine` (its model, renderer, refusal target and pad id are used);
    members: per cluster, its held-out prompts (the first `n_specificity` are used for the
    specificity matrix). Subset controls get no KL and only candidates with `generate` get
    replies. A progress bar on stderr counts the base measures, the candidates and the
    specificity. The model's lock is held throughout.
    """
    s = settings or EvalSettings()
    if not harmless:
        raise EvaluationError("no (held-out) harmless prompts: induce and side effects need them. Add a "
                              "harmless source, or raise clustering.heldout_fraction.")
    if not harmful:
        raise EvaluationError("no (held-out) harmful prompts: bypass needs them. Add a harmful source, or "
                              "raise clustering.heldout_fraction.")
    if not candidates:
        raise EvaluationError("no directions to evaluate: the clustering found no clusters and no baseline was given.")
    run = MeasureRun(engine, s)
    harmless_t, harmful_t = sample(harmless, s.n_harmless, s.seed), sample(harmful, s.n_harmful, s.seed)
    harmless_r, harmful_r = [engine.render(t) for t in harmless_t], [engine.render(t) for t in harmful_t]
    # One bar for the whole stage: the unmodified model's replies, every candidate and the
    # specificity matrix, so that no part of it runs for minutes without a sign of life.
    bar = tqdm(total=len(candidates) + 2, desc="evaluation", unit="step", file=sys.stderr)
    with engine.loaded.lock, bar:
        layers = sorted({c.layer for c in candidates})
        induce = {layer: run.inducer(harmless_r, layer) for layer in layers}
        base_less = {layer: induce[layer](None, 0.0) for layer in layers}
        scales = {layer: float(s.alpha * base_less[layer].h_norm.mean()) for layer in layers}
        base_ful = run.score(harmful_r, layers[0])
        gen_less, gen_ful = run.judge(harmless_r[: s.n_generate]), run.judge(harmful_r[: s.n_generate])
        forced = run.forced(harmless_r)
        bar.update()
        effects = []
        for c in candidates:
            add = run.adder(c, scales[c.layer])
            ablate = run.ablator(c)
            ind = induce[c.layer](c, scales[c.layer])
            gen = c.generate and s.n_generate > 0
            # Subsets are ablated on their own cluster's held-out prompts only, in the specificity
            # pass (the verdict compares bypass there); the random controls on all of them.
            full = gen or c.kind in ("cluster", "common", "baseline") or (s.controls_bypass and c.kind != "subset")
            byp = run.score(harmful_r, layers[0], ablate) if full else None
            kl = run.kl(forced, ablate) if full and c.kind != "subset" else np.full(len(harmless_r), np.nan)
            effects.append(_effect(c, scales[c.layer], s, base_less[c.layer], ind, base_ful, byp, kl,
                                   run.judge(harmless_r[: s.n_generate], add) if gen else None,
                                   run.judge(harmful_r[: s.n_generate], ablate) if gen else None))
            bar.update()
        specificity = measure_specificity(run, candidates, members, scales) if members else None
        bar.update()
    base = BaseMeasures(
        harmless_f=float(base_less[layers[0]].f.mean()), harmless_log_odds=float(base_less[layers[0]].log_odds.mean()),
        harmful_f=float(base_ful.f.mean()), harmful_log_odds=float(base_ful.log_odds.mean()),
        harmless_judge=gen_less.summary if gen_less else None, harmful_judge=gen_ful.summary if gen_ful else None,
        n_harmless=len(harmless_r), n_harmful=len(harmful_r), n_generate=min(s.n_generate, len(harmless_r)),
        harmless_examples=_examples(gen_less, s), harmful_examples=_examples(gen_ful, s),
        harmless_prompts=tuple(harmless_t[: s.n_generate]) if gen_less else (),
        harmful_prompts=tuple(harmful_t[: s.n_generate]) if gen_ful else (),
        harmless_replies=_all(gen_less), harmful_replies=_all(gen_ful),
    )
    return EvaluationResult(s, base, effects, specificity, scales)


def _rates(j: Judged | None) -> tuple[float, float, dict]:
    if j is None:
        return float("nan"), float("nan"), {}
    return j.summary.substring_rate, j.summary.strict_rate, dict(j.summary.kinds)


def _all(j: Judged | None) -> tuple[str, ...]:
    return () if j is None else tuple(j.replies)


def _examples(j: Judged | None, s: EvalSettings) -> list[str]:
    return [] if j is None else j.replies[: s.n_examples]


def _effect(c: Candidate, scale: float, s: EvalSettings, base_less, ind, base_ful, byp, kl: np.ndarray,
            gen_ind: Judged | None, gen_byp: Judged | None) -> DirectionEffect:
    induce_df, induce_sem = mean_and_sem(ind.f - base_less.f)
    # Without a bypass score (an f-only control under controls_bypass=False) its figures are NaN
    # and its per-prompt tuple empty, so nothing downstream mistakes it for a measured zero.
    bypass_prompts = np.empty(0) if byp is None else byp.f - base_ful.f
    bypass_lo = np.empty(0) if byp is None else byp.log_odds - base_ful.log_odds
    bypass_df, bypass_sem = mean_and_sem(bypass_prompts)
    i_sub, i_strict, i_kinds = _rates(gen_ind)
    b_sub, b_strict, b_kinds = _rates(gen_byp)
    return DirectionEffect(
        name=c.name, kind=c.kind, layer=c.layer, cluster=c.cluster, scale=scale,
        induce_df=induce_df, induce_df_sem=induce_sem,
        induce_dlog_odds=float((ind.log_odds - base_less.log_odds).mean()),
        induce_substring=i_sub, induce_strict=i_strict, induce_kinds=i_kinds,
        bypass_df=bypass_df, bypass_df_sem=bypass_sem,
        bypass_dlog_odds=float(bypass_lo.mean()) if bypass_lo.size else float("nan"),
        bypass_substring=b_sub, bypass_strict=b_strict, bypass_kinds=b_kinds,
        kl_ablate=float(np.mean(kl)), kl_ablate_max=float(np.max(kl)) if kl.size else float("nan"),
        induce_examples=_examples(gen_ind, s), bypass_examples=_examples(gen_byp, s),
        kl_ablate_prompts=tuple(float(v) for v in kl),
        induce_df_prompts=tuple(float(v) for v in ind.f - base_less.f),
        bypass_df_prompts=tuple(float(v) for v in bypass_prompts),
        induce_dlo_prompts=tuple(float(v) for v in ind.log_odds - base_less.log_odds),
        bypass_dlo_prompts=tuple(float(v) for v in bypass_lo),
        n_judged=0 if gen_ind is None else gen_ind.summary.n,
        induce_replies=_all(gen_ind), bypass_replies=_all(gen_byp),
    )


__all__ = ["BaseMeasures", "Candidate", "DirectionEffect", "EvaluationError", "EvaluationResult", "Kind",
           "Specificity", "build_candidates", "evaluate_directions", "sample"]
