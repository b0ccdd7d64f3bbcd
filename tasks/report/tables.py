"""The report's tables, as plain data: clusters, metrics side by side, evaluation.

A `Table` is a title, column names and rows of already formatted strings, so that the HTML and
the markdown renderings show the same numbers. `cluster_rows` also returns plain dicts (numbers
unformatted) for the Prefect table artifact.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from refusal_atlas.tasks.clustering.spaces import SPACES, ClusterComparison, cluster_layer_of
from refusal_atlas.tasks.clustering.metrics import ClusterMetrics
from refusal_atlas.tasks.evaluation.evaluate import EvaluationResult

#: Characters of a prompt shown in a table cell.
EXCERPT = 90


@dataclass(frozen=True)
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    note: str = ""


def fmt(value, digits: int = 3) -> str:
    """A number for a table: '—' for None/NaN, percentages are formatted by the caller."""
    if value is None:
        return "—"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    value = float(value)
    return "—" if not np.isfinite(value) else f"{value:.{digits}f}"


def pct(value) -> str:
    return "—" if value is None or not np.isfinite(value) else f"{100 * float(value):.1f}%"


def excerpt(text: str, width: int = EXCERPT) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def top_categories(categories: Sequence | None, members: np.ndarray, n: int = 3) -> str:
    if categories is None:
        return ""
    counts = Counter(categories[i] for i in members if categories[i])
    return ", ".join(f"{name} ({count})" for name, count in counts.most_common(n))


def cluster_rows(
    comparison: ClusterComparison,
    texts: Sequence[str],
    categories: Sequence | None = None,
    effect: np.ndarray | None = None,
    layers: Sequence[int] | None = None,
    evaluation: EvaluationResult | None = None,
    significance=None,
) -> list[dict]:
    """One dict per cluster of both spaces: size, layer, top categories, cohesion, the cosine to
    the common direction, the members' mean stored effect at the cluster's layer, the induce
    effect of its direction (chosen space, when evaluated) and example prompts. Values are plain
    JSON (a missing number is None, the examples one string), ready for a Prefect table artifact.
    significance (clustering.significance.Significance): adds, for the chosen space, each
    cluster's bootstrap stability ("stable" or "UNSTABLE" with its median Jaccard) and its p
    against the null, so an unstable cluster is marked wherever it is listed."""
    induced = {e.cluster: e.induce_df for e in evaluation.of_kind("cluster")} if evaluation else {}
    out = []
    for space in SPACES:
        result = comparison.space(space)
        cluster_layer = cluster_layer_of(comparison, result)
        n = max(result.labels.size, 1)
        for k in range(result.n_clusters):
            members = np.flatnonzero(result.labels == k)
            size = int(members.size)
            within = (float(result.sums[k] @ result.sums[k]) - size) / (size * (size - 1)) if size > 1 else float("nan")
            out.append({
                "space": space,
                "cluster": k,
                "size": size,
                "share": size / n,
                "layer": int(cluster_layer[k]),
                "top_categories": top_categories(categories, members),
                "within_cosine": within,
                "cosine_to_common": float(result.directions[k] @ comparison.common),
                "mean_effect": _member_effect(effect, layers, members, int(cluster_layer[k])),
                "induce_df": induced.get(k) if space == comparison.chosen else None,
                "stability": _stability(significance, k) if space == comparison.chosen else None,
                "p_null": (float(significance.null.p_persistence[k])
                           if significance is not None and space == comparison.chosen else None),
                "examples": " | ".join(excerpt(texts[i]) for i in result.exemplars[k][:3]),
            })
    return [{key: _plain(value) for key, value in row.items()} for row in out]


def _stability(significance, k: int) -> str | None:
    if significance is None:
        return None
    s = significance.stability
    word = "stable" if s.stable[k] else "UNSTABLE"
    fates = s.describe_fates(k)
    return f"{word} (median Jaccard {float(s.median[k]):.2f}{'; ' + fates if fates else ''})"


def _plain(value):
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    return value


def _member_effect(effect, layers, members: np.ndarray, layer: int) -> float:
    if effect is None or layers is None or layer not in list(layers):
        return float("nan")
    values = np.asarray(effect)[members, list(layers).index(layer)]
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def clusters_table(rows: list[dict]) -> Table:
    columns = ["space", "cluster", "size", "share", "layer", "top categories", "within cos",
               "cos to common", "mean effect", "induce Δf", "stability", "p vs null", "examples"]
    body = [[r["space"], str(r["cluster"]), str(r["size"]), pct(r["share"]), str(r["layer"]), r["top_categories"],
             fmt(r["within_cosine"]), fmt(r["cosine_to_common"]), fmt(r["mean_effect"]), fmt(r["induce_df"]),
             r.get("stability") or "—", fmt(r.get("p_null")), r["examples"]] for r in rows]
    note = ("within cos: mean pairwise cosine of the members' directions; mean effect: the members' stored "
            "f(h_0 + alpha ||h_0|| d) - f(h_0) at the cluster's layer; induce Δf: the cluster direction's "
            "mean change in f on held-out harmless prompts (evaluation). Within cos above the cosine between "
            "clusters and a positive mean effect of the members are expected by construction, not evidence. "
            "stability: per-cluster bootstrap (UNSTABLE below a median Jaccard of 0.6), with what became of the "
            "cluster in the resamples: kept, split into purer parts, merged into a larger cluster, or "
            "dissolved into noise; p vs null: the "
            "cluster's persistence against structureless surrogate sets.")
    return Table("Clusters", columns, body, note)


def metrics_table(metrics: Mapping[str, ClusterMetrics], mean_cosine: float) -> Table:
    spaces = list(metrics)

    def row(name: str, value) -> list[str]:
        return [name, *(value(metrics[s]) for s in spaces)]

    def categories(m: ClusterMetrics, clustered: bool) -> str:
        c = m.categories
        if c is None:
            return "no categories"
        if clustered:
            return f"{fmt(c.ari_clustered)} / {fmt(c.nmi_clustered)} (n={c.n_clustered})"
        return f"{fmt(c.ari)} / {fmt(c.nmi)} (n={c.n_used}, {c.n_categories} categories)"

    def max_offdiag(m: ClusterMetrics) -> str:
        cos = np.asarray(m.direction_cosines)
        if cos.shape[0] < 2:
            return "—"
        return fmt(np.max(cos[~np.eye(cos.shape[0], dtype=bool)]))

    rows = [
        row("points", lambda m: str(m.n_points)),
        row("clusters", lambda m: str(m.n_clusters)),
        row("noise share", lambda m: pct(m.noise_share)),
        row("mean within-cluster cosine (directions)", lambda m: fmt(m.mean_within_cosine)),
        row("mean within-cluster cosine (this space)", lambda m: fmt(m.mean_space_within_cosine)),
        row("max cosine between cluster directions", max_offdiag),
        row("silhouette (cosine)", lambda m: f"{fmt(m.silhouette)} ({m.silhouette_note})"),
        row("stability: ARI mean / min (pairs)",
            lambda m: f"{fmt(m.stability_mean)} / {fmt(m.stability_min)} ({m.stability_pairs})"),
        row("ARI / NMI vs categories, noise as a group", lambda m: categories(m, False)),
        row("ARI / NMI vs categories, clustered rows", lambda m: categories(m, True)),
    ]
    note = f"Mean pairwise cosine of all clustered directions (the shared component): {fmt(mean_cosine)}."
    return Table("Raw and residual clustering side by side", ["metric", *spaces], rows, note)


def examples_table(evaluation: EvaluationResult) -> Table:
    """The first greedy replies of the unmodified model and under each intervention."""
    b = evaluation.base
    rows = [["unmodified model", " | ".join(map(excerpt, b.harmless_examples)) or "—",
             " | ".join(map(excerpt, b.harmful_examples)) or "—"]]
    rows += [[e.name, " | ".join(map(excerpt, e.induce_examples)) or "—", " | ".join(map(excerpt, e.bypass_examples)) or "—"]
             for e in evaluation.effects]
    return Table("Example replies", ["direction", "harmless prompt, direction added", "harmful prompt, direction ablated"],
                 rows, "Greedy replies to the first evaluation prompts (the unmodified row: no intervention).")
