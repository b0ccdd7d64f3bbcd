"""The verdict's part of the report: its headline, the criteria with their figures, the
significance of the clustering, held-out figures with intervals, and the figures that are
expected by construction, each marked as such.

The verdict comes first in the report and in the CLI's summary, so a reader meets the answer and
the evidence before any figure that could be read as evidence and is not.
"""

from __future__ import annotations

import numpy as np

from refusal_atlas.tasks.evaluation.evaluate import EvaluationResult
from refusal_atlas.tasks.evaluation.evidence import MEASURES, effect_estimate, kl_estimate, rate_estimate
from refusal_atlas.tasks.evaluation.verdict import BY_CONSTRUCTION, Verdict
from refusal_atlas.tasks.report.tables import Table

#: How a change on each effect scale (EvalSettings.effect_scale) is written in a column head.
SCALE_LABEL = {"log_odds": "Δlog-odds", "f": "Δf"}
SCALE_NAME = {"log_odds": "the refusal log-odds at the first reply position", "f": "f = log P(refusal phrases)"}

#: The mark every by-construction figure carries wherever it is shown.
MARK = "expected by construction, not evidence"


def verdict_dict(verdict: Verdict | None, significance=None) -> dict | None:
    """Plain JSON for the flow's result and the CLI's summary."""
    if verdict is None:
        return None
    return {
        "headline": verdict.headline(),
        "kind": verdict.kind,
        "count": verdict.count,
        "supported": list(verdict.supported),
        "criteria": [{"name": c.name, "figure": c.figure, "passed": c.passed, "decides": c.decides}
                     for c in verdict.criteria],
        "h0_control": None if significance is None or significance.h0 is None else significance.h0.describe(),
        "unstable": [] if significance is None else
        [int(k) for k in np.flatnonzero(~significance.stability.stable)],
    }


def verdict_lines(verdict: Verdict | None, significance, why_none: str) -> list[str]:
    """The report's first sentences."""
    if verdict is None:
        return [f"Verdict: not reached ({why_none})."]
    out = [verdict.headline()]
    if significance is not None and significance.h0 is not None:
        out.append("h_0 control (qualifies the verdict, not one of its criteria): "
                   + significance.h0.describe() + ".")
    return out


def verdict_table(verdict: Verdict) -> Table:
    rows = [[c.name, c.figure, "pass" if c.passed else "fail", "yes" if c.decides else "context only"]
            for c in verdict.criteria]
    note = ("A cluster is a supported direction when it passes all four criteria; intervals are 95% (paired "
            "bootstrap for differences on the same held-out prompts, unpaired for the specificity index). "
            "Effects are signed so that larger means the direction does more. See docs/METHOD.md, 'The verdict'.")
    return Table("Verdict: criteria and their figures", ["criterion", "figure (95% interval)", "result", "decides"],
                 rows, note)


def heldout_table(ev: EvaluationResult) -> Table:
    """Every candidate but the subset means (summarised per cluster) with intervals."""
    scale = ev.settings.effect_scale
    unit = SCALE_LABEL[scale]
    columns = ["direction", "kind", "layer", f"induce {unit} (rise)", f"bypass {unit} (fall)",
               "induce refusals substr / strict", "bypass refusals substr / strict", "KL ablated"]
    seed = ev.settings.seed
    rows = []
    for e in ev.effects:
        if e.kind == "subset":
            continue
        n = e.n_judged
        rows.append([e.name, e.kind, str(e.layer),
                     *(effect_estimate(e, m, scale, seed).format() for m in MEASURES),
                     f"{rate_estimate(e.induce_substring, n).format()} / {rate_estimate(e.induce_strict, n).format()}",
                     f"{rate_estimate(e.bypass_substring, n).format()} / {rate_estimate(e.bypass_strict, n).format()}",
                     kl_estimate(e, seed).format(4)])
    for k in sorted({e.cluster for e in ev.of_kind("subset")}):
        subsets = [e for e in ev.of_kind("subset") if e.cluster == k]
        cells = []
        for m in MEASURES:
            means = np.array([effect_estimate(e, m, scale, seed).value for e in subsets])
            cells.append(f"{means.mean():.2f} (range {means.min():.2f} to {means.max():.2f}, {means.size} subsets)")
        rows.append([f"subset means for cluster {k}", "subset", str(subsets[0].layer), *cells, "—", "—", "—"])
    b = ev.base
    note = (f"All on held-out prompts: {b.n_harmless} harmless (induce, KL) and {b.n_harmful} harmful (bypass); "
            f"replies judged on {b.n_generate} of each. {unit}: the change in {SCALE_NAME[scale]} "
            "(the scale the verdict reads); intervals: bootstrap over prompts; refusal shares: "
            "Wilson; KL: bootstrap of the per-prompt mean over the first reply tokens. Comparing cluster "
            f"directions with random directions or the difference in means on f is {MARK}.")
    return Table("Held-out evaluation with intervals", columns, rows, note)


def by_construction_table(ev: EvaluationResult | None, cluster_count: int) -> Table:
    """Figures that come out positive whatever the model does, each with its reason."""
    figures = {"HDBSCAN finds clusters": f"{cluster_count} clusters"}
    if ev is not None:
        clusters, randoms, base = ev.of_kind("cluster"), ev.of_kind("random"), ev.of_kind("baseline")
        if clusters and randoms:
            beats = sum(e.induce_df > max((r.induce_df for r in randoms if r.layer == e.layer), default=np.inf)
                        for e in clusters)
            figures["cluster directions beat random directions on f"] = f"{beats} of {len(clusters)} (induce)"
        if clusters and base:
            at = {b.layer: b for b in base}
            beats = sum(e.induce_df > at[e.layer].induce_df for e in clusters if e.layer in at)
            figures["cluster directions beat the difference in means on f"] = f"{beats} of {len(clusters)} (induce)"
    rows = [[name, figures.get(name, "not shown"), MARK, reason] for name, reason in BY_CONSTRUCTION.items()]
    return Table("Expected by construction, not evidence", ["figure", "value", "status", "why"], rows,
                 "No criterion of the verdict reads these figures.")
