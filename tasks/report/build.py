"""The clustering and evaluation report: one self-contained HTML page, and its markdown twin.

`build_report` takes the results as data and returns strings and bytes; `write_report` is the
only function that touches the file system. Figures are embedded as base64 PNG data URIs, so
the HTML file can be mailed or opened anywhere and the markdown renders in the Prefect UI.

The findings at the top are computed from the numbers, never assumed: a clustering that calls
everything noise is reported as such, and cluster directions are compared with the baseline
and random controls whichever way the comparison goes.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from refusal_atlas.tasks.report import plots
from refusal_atlas.tasks.clustering.spaces import SPACES, ClusterComparison
from refusal_atlas.tasks.clustering.metrics import ClusterMetrics
from refusal_atlas.tasks.clustering.significance import Significance
from refusal_atlas.tasks.evaluation.evaluate import EvaluationResult
from refusal_atlas.tasks.evaluation.evidence import rate_estimate
from refusal_atlas.tasks.evaluation.verdict import Verdict
from refusal_atlas.tasks.report.recovery_text import recovery_html, recovery_markdown
from refusal_atlas.tasks.report.verdict_tables import (
    MARK,
    SCALE_LABEL,
    by_construction_table,
    heldout_table,
    verdict_dict,
    verdict_lines,
    verdict_table,
)
from refusal_atlas.tasks.report.tables import (
    Table,
    cluster_rows,
    clusters_table,
    examples_table,
    fmt,
    metrics_table,
    pct,
)


@dataclass(frozen=True)
class ReportInputs:
    """Everything the report shows. texts, categories, effect [n, L] and best_layer [n] are per
    clustered row (the comparison's row order); layers are the stored model layers."""

    comparison: ClusterComparison
    metrics: Mapping[str, ClusterMetrics]
    texts: Sequence[str]
    categories: Sequence | None = None
    effect: np.ndarray | None = None
    layers: Sequence[int] | None = None
    best_layer: np.ndarray | None = None
    evaluation: EvaluationResult | None = None
    title: str = "refusal-atlas: clusters of refusal directions"
    details: Mapping[str, str] = field(default_factory=dict)
    verdict: Verdict | None = None
    significance: Significance | None = None
    # The organism's recovery section (tasks.report.recovery.run_recovery), placed after the
    # findings; None for a model with nothing planted.
    recovery: dict | None = None


@dataclass(frozen=True)
class Report:
    html: str
    markdown: str
    cluster_rows: list[dict]
    findings: list[str]
    images: dict[str, bytes] = field(repr=False)
    verdict: dict | None = None


def findings(inputs: ReportInputs) -> list[str]:
    """Plain sentences stating what was found, the verdict first."""
    c, m = inputs.comparison, inputs.metrics
    why = ("the evaluation was not run" if inputs.evaluation is None else
           "the clustering's null model and stability were not computed (null_sets = 0)")
    out = [
        *verdict_lines(inputs.verdict, inputs.significance, why),
        "; ".join(_space_sentence(space, m[space]) for space in SPACES if space in m) + ".",
        f"The clustered directions' mean pairwise cosine is {fmt(c.mean_cosine)} "
        "(how much they share before the common direction is removed).",
    ]
    if c.dropped:
        out.append(f"{c.dropped} rows had no finite direction and were left out.")
    agreement = [f"{space} ARI {fmt(m[space].categories.ari)}, NMI {fmt(m[space].categories.nmi)}"
                 for space in SPACES if space in m and m[space].categories is not None]
    if agreement:
        used = next(m[s].categories.n_used for s in SPACES if s in m and m[s].categories is not None)
        out.append(f"Against dataset categories ({used} rows with one, noise counted as a group): "
                   + "; ".join(agreement) + ".")
    if inputs.evaluation is not None:
        out += _evaluation_sentences(inputs.evaluation)
    return out


def _space_sentence(space: str, metrics: ClusterMetrics) -> str:
    label = "raw directions" if space == "raw" else "residual (common direction removed)"
    if metrics.n_clusters == 0:
        return f"{label}: 0 clusters, all {metrics.n_points} points noise"
    return f"{label}: {metrics.n_clusters} clusters, noise share {pct(metrics.noise_share)} of {metrics.n_points}"


def _evaluation_sentences(ev: EvaluationResult) -> list[str]:
    clusters, baseline, randoms = ev.of_kind("cluster"), ev.of_kind("baseline"), ev.of_kind("random")
    # Each cluster direction is compared with the controls at its own layer: the baseline and
    # random directions at another layer act on a different stream with a different scale.
    base_at = {e.layer: e for e in baseline}
    randoms_at = {layer: [e for e in randoms if e.layer == layer] for layer in {e.layer for e in randoms}}
    out = [] if clusters else ["No cluster directions to evaluate (no clusters); the baseline and random "
                               "controls were measured alone."]
    for measure, sign, label in (("induce_df", 1, "Induce (mean change in f on harmless prompts)"),
                                 ("bypass_df", -1, "Bypass (mean change in f on harmful prompts)")):
        parts = []
        values = {e.name: getattr(e, measure) for e in clusters}
        if values:
            best = max(values, key=lambda name: sign * values[name])
            parts.append(f"strongest cluster direction {best} {fmt(values[best])}")
        if baseline:
            parts.append("difference-in-means " + _per_layer(base_at, lambda e: fmt(getattr(e, measure))))
        if randoms:
            r = np.array([getattr(e, measure) for e in randoms])
            extreme = float(sign * np.max(sign * r))
            parts.append(f"random controls mean {fmt(r.mean())} ({'max' if sign > 0 else 'min'} {fmt(extreme)})")
            paired = [e for e in clusters if randoms_at.get(e.layer)]
            if paired:
                beats = sum(all(sign * getattr(e, measure) > sign * getattr(r, measure) for r in randoms_at[e.layer])
                            for e in paired)
                parts.append(f"{beats} of {len(paired)} cluster directions beat every random control at their layer "
                             f"({MARK})")
        paired = [e for e in clusters if e.layer in base_at]
        if paired:
            beats_base = sum(sign * getattr(e, measure) > sign * getattr(base_at[e.layer], measure) for e in paired)
            parts.append(f"{beats_base} of {len(paired)} beat the baseline at their layer ({MARK})")
        out.append(f"{label}: " + "; ".join(parts) + ".")
    spec = ev.specificity
    k = len(clusters)
    if spec is not None and k > 1 and spec.matrix.shape[1] == k:
        own = spec.matrix[:k, :k]
        off = own[~np.eye(k, dtype=bool)]
        out.append(f"Specificity (held-out harmful prompts, direction ablated): f falls by "
                   f"{fmt(np.nanmean(np.diag(own)))} on a cluster's own prompts and {fmt(np.nanmean(off))} on other "
                   "clusters' prompts (means over the matrix); each cluster's specificity index, with its "
                   "interval, is in the verdict table.")
    b = ev.base
    if b.harmless_judge is not None:
        parts = [f"unmodified {_shares(b.harmless_judge.substring_rate, b.harmless_judge.strict_rate, b.n_generate)}"]
        if clusters:
            top = max(clusters, key=lambda e: e.induce_substring)
            parts.append(f"highest cluster direction ({top.name}) {_shares(top.induce_substring, top.induce_strict, b.n_generate)}")
        if baseline:
            parts.append("difference-in-means "
                         + _per_layer(base_at, lambda e: _shares(e.induce_substring, e.induce_strict, b.n_generate)))
        judged = [e for e in randoms if e.n_judged]
        if judged:
            top = max(judged, key=lambda e: e.induce_substring)
            parts.append(f"highest random control {_shares(top.induce_substring, top.induce_strict, b.n_generate)}")
        out.append(f"Greedy replies to {b.n_generate} harmless prompts judged refusals (substring / strict) with "
                   "the direction added: " + "; ".join(parts) + ".")
    if b.harmful_judge is not None and b.harmful_judge.substring_rate == 0:
        out.append(f"The unmodified model refused none of {b.harmful_judge.n} harmful prompts (substring judge), "
                   "so bypass cannot lower its refusal rate here; only the changes in f and log-odds are informative.")
    return out


def _per_layer(at_layer: Mapping[int, object], show) -> str:
    """One figure, or one per layer ("at L3 x, at L5 y") when candidates sit at several layers."""
    if len(at_layer) == 1:
        return show(next(iter(at_layer.values())))
    return ", ".join(f"at L{layer} {show(e)}" for layer, e in sorted(at_layer.items()))


def _shares(substring: float, strict: float, n: int) -> str:
    """Both judges' refusal shares, each with its Wilson interval."""
    return f"{rate_estimate(substring, n).format()} / {rate_estimate(strict, n).format()}"


def images(inputs: ReportInputs) -> dict[str, bytes]:
    c = inputs.comparison
    out = {"projection": plots.projection_png(
        {s: (c.space(s).embedding, c.space(s).labels) for s in SPACES}, inputs.categories, c.settings.seed)}
    result = c.result
    if result.n_clusters:
        names = [f"c{k}" for k in range(result.n_clusters)]
        out["cosines"] = plots.heatmap_png(result.directions @ result.directions.T, names, names,
                                           f"cosines of cluster directions ({c.chosen})", "cosine")
    spec = inputs.evaluation.specificity if inputs.evaluation else None
    if spec is not None:
        out["specificity"] = plots.heatmap_png(spec.matrix, spec.rows, spec.columns,
                                               f"specificity: {SCALE_LABEL[spec.scale]} when a direction (row) is "
                                               "ablated on a cluster's prompts (column)",
                                               f"mean fall in {'refusal log-odds' if spec.scale == 'log_odds' else 'f (nats)'}")
    if inputs.effect is not None and inputs.layers is not None:
        out["effect_by_layer"] = plots.effect_by_layer_png(inputs.effect, inputs.layers, inputs.best_layer)
    return out


_CAPTIONS = {
    "projection": "2-D PCA of the clustered embeddings, raw and residual, coloured by cluster and by category",
    "cosines": "Cosines between cluster directions",
    "specificity": "Specificity matrix",
    "effect_by_layer": "Effect of each prompt's direction by layer",
}


def build_report(inputs: ReportInputs) -> Report:
    rows = cluster_rows(inputs.comparison, inputs.texts, inputs.categories, inputs.effect, inputs.layers,
                        inputs.evaluation, inputs.significance)
    tables = [verdict_table(inputs.verdict)] if inputs.verdict is not None else []
    tables += [metrics_table(inputs.metrics, inputs.comparison.mean_cosine), clusters_table(rows)]
    if inputs.evaluation is not None:
        tables += [heldout_table(inputs.evaluation), examples_table(inputs.evaluation)]
    tables.append(by_construction_table(inputs.evaluation, inputs.comparison.result.n_clusters))
    found = findings(inputs)
    pictures = images(inputs)
    settings = {"clustering": inputs.comparison.settings.model_dump_json(),
                **({"evaluation": inputs.evaluation.settings.model_dump_json()} if inputs.evaluation else {}),
                **inputs.details}
    return Report(
        html=_html(inputs.title, found, tables, pictures, settings,
                   recovery_html(inputs.recovery) if inputs.recovery else ""),
        markdown=_markdown(inputs.title, found, tables, pictures, settings,
                           recovery_markdown(inputs.recovery) if inputs.recovery else ""),
        cluster_rows=rows,
        findings=found,
        images=pictures,
        verdict=verdict_dict(inputs.verdict, inputs.significance),
    )


def write_report(report: Report, path: str | Path) -> Path:
    """Write the HTML report to path (parent folders are created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report.html, encoding="utf-8")
    return path


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


_STYLE = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
          "table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;"
          "vertical-align:top}th{background:#f3f3f3}img{max-width:100%}.note{color:#555;font-size:13px}")


def _html(title: str, found: list[str], tables: list[Table], pictures: dict[str, bytes], settings: dict,
          recovery: str = "") -> str:
    e = html.escape
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(title)}</title>"
             f"<style>{_STYLE}</style></head><body><h1>{e(title)}</h1>",
             "<h2 id='findings'>Findings</h2><ul>" + "".join(f"<li>{e(f)}</li>" for f in found) + "</ul>",
             recovery]
    for table in tables:
        head = "".join(f"<th>{e(c)}</th>" for c in table.columns)
        body = "".join("<tr>" + "".join(f"<td>{e(v)}</td>" for v in row) + "</tr>" for row in table.rows)
        parts.append(f"<h2>{e(table.title)}</h2><table><tr>{head}</tr>{body}</table>"
                     f"<p class='note'>{e(table.note)}</p>")
    parts.append("<h2 id='figures'>Figures</h2>")
    for name, png in pictures.items():
        caption = e(_CAPTIONS.get(name, name))
        parts.append(f"<figure><img alt='{caption}' src='{data_uri(png)}'><figcaption>{caption}</figcaption></figure>")
    parts.append("<h2 id='settings'>Settings</h2><ul>"
                 + "".join(f"<li><b>{e(k)}</b>: <code>{e(v)}</code></li>" for k, v in settings.items()) + "</ul>")
    return "".join(parts) + "</body></html>\n"


def _md_cell(value: str) -> str:
    """A table cell: pipes escaped, and angle brackets as entities so prompts cannot inject HTML."""
    text = str(value).replace("|", "\\|").replace("\n", " ")
    return text.replace("<", "&lt;").replace(">", "&gt;")


def _markdown(title: str, found: list[str], tables: list[Table], pictures: dict[str, bytes], settings: dict,
              recovery: str = "") -> str:
    lines = [f"# {title}", "", "## Findings", "", *(f"- {f}" for f in found), ""]
    if recovery:
        lines += [recovery, ""]
    for table in tables:
        lines += [f"## {table.title}", "", "| " + " | ".join(map(_md_cell, table.columns)) + " |",
                  "|" + "---|" * len(table.columns)]
        lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in table.rows]
        lines += ["", f"_{table.note}_" if table.note else "", ""]
    lines += ["## Figures", ""]
    for name, png in pictures.items():
        lines += [f"![{_CAPTIONS.get(name, name)}]({data_uri(png)})", ""]
    lines += ["## Settings", "", *(f"- **{k}**: `{v}`" for k, v in settings.items()), ""]
    return "\n".join(lines)
