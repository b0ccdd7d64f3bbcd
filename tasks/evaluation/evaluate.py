"""Evaluating cluster directions against the difference-in-means baseline and random controls.

For every candidate direction c (unit, at a layer L):

- induce: add alpha * s_L * c to layer L's output at every position on harmless prompts, where
  s_L is the mean ||h_0|| of those prompts at L (`EvalSettings.alpha`); report the change in f,
  in the refusal log-odds, and the share of greedy replies judged refusals (substring and strict);
- bypass: project c out of the embeddings, every block's input and output and every attention
  and MLP output on harmful prompts (Arditi's directional ablation); the same measures;
- side effects: KL(base || ablated) of the next-token distribution, averaged over the first
  `kl_tokens` positions of the unmodified model's greedy replies to harmless prompts,
  teacher-forced (one value per prompt, so the mean can carry an interval);
- specificity: the mean change in f when cluster k's direction is added (as in induce) on
  cluster j's member prompts, a [K, K] matrix, plus rows for the baseline and the mean random
  control.

Candidates at one layer all get the same norm, so cluster, baseline and random directions are
compared like for like. Nothing here assumes the cluster directions work: the result holds the
numbers for every candidate, and the report says which won.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from refusal_atlas.tasks.evaluation.measures import Judged, MeasureRun, mean_and_sem
from refusal_atlas.tasks.evaluation.settings import EvalSettings
from refusal_atlas.tasks.evaluation.judge import JudgeSummary

Kind = Literal["cluster", "baseline", "random"]


class EvaluationError(ValueError):
    """The evaluation cannot run as asked; the message names the fix."""


@dataclass(frozen=True)
class Candidate:
    """A direction to test: a unit vector [D] at a model layer."""

    name: str
    kind: Kind
    layer: int
    vector: np.ndarray = field(repr=False)
    cluster: int | None = None


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
    kl_ablate_prompts: tuple[float, ...] = ()


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


@dataclass(frozen=True)
class Specificity:
    """matrix [R, K]: mean change in f of row direction r added on cluster j's prompts."""

    matrix: np.ndarray
    rows: list[str]
    columns: list[str]
    n_prompts: list[int]


@dataclass(frozen=True)
class EvaluationResult:
    settings: EvalSettings
    base: BaseMeasures
    effects: list[DirectionEffect]
    specificity: Specificity | None
    scales: dict[int, float]

    def of_kind(self, kind: Kind) -> list[DirectionEffect]:
        return [e for e in self.effects if e.kind == kind]


def build_candidates(
    cluster_directions: np.ndarray,
    cluster_layers: Sequence[int],
    baseline: Mapping[int, np.ndarray] | None,
    n_random: int,
    seed: int,
    default_layers: Sequence[int] = (),
) -> list[Candidate]:
    """Cluster directions [K, D] at their layers, the baseline at each of those layers (when
    given: {layer: vector}) and n_random seeded random unit directions per layer. Without
    cluster directions the baseline and controls go to default_layers, so a clustering that
    found nothing still gets its baseline measured."""
    clusters = [Candidate(f"cluster {k}", "cluster", int(layer), _unit(v), k)
                for k, (v, layer) in enumerate(zip(cluster_directions, cluster_layers))]
    layers = sorted({c.layer for c in clusters}) or sorted({int(layer) for layer in default_layers})
    out = list(clusters)
    if baseline is not None:
        missing = [layer for layer in layers if layer not in baseline]
        if missing:
            raise EvaluationError(f"no difference-in-means vector at layer(s) {missing}; compute concept vectors there.")
        out += [Candidate(_at("diff-in-means", layer, layers), "baseline", layer, _unit(baseline[layer]))
                for layer in layers]
    rng = np.random.default_rng(seed)
    dim = cluster_directions.shape[1]
    for layer in layers:
        out += [Candidate(_at(f"random {i}", layer, layers), "random", layer, _unit(rng.standard_normal(dim)))
                for i in range(n_random)]
    return out


def _at(name: str, layer: int, layers: Sequence[int]) -> str:
    return name if len(layers) == 1 else f"{name} @L{layer}"


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    norm = np.linalg.norm(v)
    if not np.isfinite(norm) or norm == 0:
        raise EvaluationError("a candidate direction is zero or not finite; it cannot be evaluated.")
    return v / norm


def sample(texts: Sequence[str], n: int, seed: int) -> list[str]:
    """At most n texts, a seeded sample kept in input order."""
    if len(texts) <= n:
        return list(texts)
    keep = np.sort(np.random.default_rng(seed).choice(len(texts), n, replace=False))
    return [texts[i] for i in keep]


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
    members: per cluster, its member prompts with the most representative first (the first
    `n_specificity` are used). The model's lock is held throughout.
    """
    s = settings or EvalSettings()
    if not harmless:
        raise EvaluationError("no harmless prompts: induce and side effects need them. Add a harmless source.")
    if not harmful:
        raise EvaluationError("no harmful prompts: bypass needs them. Add a harmful source.")
    if not candidates:
        raise EvaluationError("no directions to evaluate: the clustering found no clusters and no baseline was given.")
    run = MeasureRun(engine, s)
    harmless_r = [engine.render(t) for t in sample(harmless, s.n_harmless, s.seed)]
    harmful_r = [engine.render(t) for t in sample(harmful, s.n_harmful, s.seed)]
    with engine.loaded.lock:
        layers = sorted({c.layer for c in candidates})
        base_less = {layer: run.score(harmless_r, layer) for layer in layers}
        scales = {layer: float(s.alpha * base_less[layer].h_norm.mean()) for layer in layers}
        base_ful = run.score(harmful_r, layers[0])
        gen_less, gen_ful = run.judge(harmless_r[: s.n_generate]), run.judge(harmful_r[: s.n_generate])
        forced = run.forced(harmless_r)
        effects = []
        for c in candidates:
            add = run.adder(c, scales[c.layer])
            ablate = run.ablator(c)
            ind = run.score(harmless_r, c.layer, add)
            byp = run.score(harmful_r, layers[0], ablate)
            kl = run.kl(forced, ablate)
            effects.append(_effect(c, scales[c.layer], s, base_less[c.layer], ind, base_ful, byp, kl,
                                   run.judge(harmless_r[: s.n_generate], add),
                                   run.judge(harmful_r[: s.n_generate], ablate)))
        specificity = _specificity(run, candidates, members, scales) if members else None
    base = BaseMeasures(
        harmless_f=float(base_less[layers[0]].f.mean()), harmless_log_odds=float(base_less[layers[0]].log_odds.mean()),
        harmful_f=float(base_ful.f.mean()), harmful_log_odds=float(base_ful.log_odds.mean()),
        harmless_judge=gen_less.summary if gen_less else None, harmful_judge=gen_ful.summary if gen_ful else None,
        n_harmless=len(harmless_r), n_harmful=len(harmful_r), n_generate=min(s.n_generate, len(harmless_r)),
        harmless_examples=_examples(gen_less, s), harmful_examples=_examples(gen_ful, s),
    )
    return EvaluationResult(s, base, effects, specificity, scales)


def _rates(j: Judged | None) -> tuple[float, float, dict]:
    if j is None:
        return float("nan"), float("nan"), {}
    return j.summary.substring_rate, j.summary.strict_rate, dict(j.summary.kinds)


def _examples(j: Judged | None, s: EvalSettings) -> list[str]:
    return [] if j is None else j.replies[: s.n_examples]


def _effect(c: Candidate, scale: float, s: EvalSettings, base_less, ind, base_ful, byp, kl: np.ndarray,
            gen_ind: Judged | None, gen_byp: Judged | None) -> DirectionEffect:
    induce_df, induce_sem = mean_and_sem(ind.f - base_less.f)
    bypass_df, bypass_sem = mean_and_sem(byp.f - base_ful.f)
    i_sub, i_strict, i_kinds = _rates(gen_ind)
    b_sub, b_strict, b_kinds = _rates(gen_byp)
    return DirectionEffect(
        name=c.name, kind=c.kind, layer=c.layer, cluster=c.cluster, scale=scale,
        induce_df=induce_df, induce_df_sem=induce_sem,
        induce_dlog_odds=float((ind.log_odds - base_less.log_odds).mean()),
        induce_substring=i_sub, induce_strict=i_strict, induce_kinds=i_kinds,
        bypass_df=bypass_df, bypass_df_sem=bypass_sem,
        bypass_dlog_odds=float((byp.log_odds - base_ful.log_odds).mean()),
        bypass_substring=b_sub, bypass_strict=b_strict, bypass_kinds=b_kinds,
        kl_ablate=float(kl.mean()), kl_ablate_max=float(kl.max()),
        induce_examples=_examples(gen_ind, s), bypass_examples=_examples(gen_byp, s),
        kl_ablate_prompts=tuple(float(v) for v in kl),
    )


def _specificity(run: MeasureRun, candidates: Sequence[Candidate], members: Sequence[Sequence[str]],
                 scales: Mapping[int, float]) -> Specificity:
    """Rows: each cluster direction, each baseline, and the mean over random controls (per
    layer when there are several); columns: the clusters' member prompts."""
    per_cluster = [list(texts[: run.s.n_specificity]) for texts in members]
    if any(not texts for texts in per_cluster):
        raise EvaluationError("a cluster has no member prompts for the specificity matrix.")
    rendered = [[run.render(t) for t in texts] for texts in per_cluster]
    flat = [r for group in rendered for r in group]
    bounds = np.cumsum([0, *(len(g) for g in rendered)])

    def row(c: Candidate, base) -> np.ndarray:
        delta = run.score(flat, c.layer, run.adder(c, scales[c.layer])).f - base[c.layer].f
        return np.array([delta[a:b].mean() for a, b in zip(bounds[:-1], bounds[1:])])

    base = {layer: run.score(flat, layer) for layer in sorted(scales)}
    names, rows = [], []
    for c in candidates:
        if c.kind != "random":
            names.append(c.name)
            rows.append(row(c, base))
    for layer in sorted(scales):
        randoms = [row(c, base) for c in candidates if c.kind == "random" and c.layer == layer]
        if randoms:
            names.append(_at("random (mean)", layer, sorted(scales)))
            rows.append(np.mean(randoms, axis=0))
    columns = [f"cluster {j}" for j in range(len(per_cluster))]
    return Specificity(np.array(rows), names, columns, [len(g) for g in rendered])
