"""The report's recovery section (tasks.report.recovery) as markdown and HTML fragments: the
same summary lines and tables for both, so the report builder can place the section wherever it
wants and the benchmark can print it."""

from __future__ import annotations

import html

import numpy as np


def _f(value, digits: int = 3) -> str:
    if value is None:
        return "—"
    value = float(value)
    return "—" if not np.isfinite(value) else f"{value:.{digits}f}"


def _tables(section: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, columns, rows of strings): the same figures for markdown and HTML."""
    types = section["planted_types"]
    out = [(
        "Clusters x planted types",
        ["cluster", *types, "size", "majority (purity)"],
        [[r["cluster"], *(str(r["counts"][t]) for t in types), str(r["size"]),
          f"{r['majority']} ({_f(r['purity'], 2)})" if r["majority"] else "—"] for r in section["confusion"]["rows"]],
    )]
    if section["induce"]:
        styles = sorted({s for shares in section["induce"].values() for s in shares}, key=lambda s: (s == "none", s))
        out.append((
            "Style induced on held-out controls (share of greedy replies)",
            ["direction", *styles],
            [[name, *(_f(shares.get(s), 2) for s in styles)] for name, shares in section["induce"].items()],
        ))
    if section["ablate"]:
        out.append((
            "Own-style refusal with the direction ablated (before → after)",
            ["direction", *types],
            [[name, *(f"{_f(by_type[t]['before'], 2)} → {_f(by_type[t]['after'], 2)}" if t in by_type else "—"
                      for t in types)] for name, by_type in section["ablate"].items()],
        ))
    mechanism = section.get("planted_directions")
    if mechanism:
        groups = mechanism["groups"]
        out.append((
            f"Cosine with the planted directions (layer {mechanism['layer']}; the organism was trained to refuse "
            "each type through its own)",
            ["direction", *groups],
            [[name, *((_f(cos[g], 2) for g in groups) if cos is not None else ["other layer"] * len(groups))]
             for name, cos in mechanism["rows"].items()],
        ))
    return out


CLUSTER_VECTORS = {
    "gradient_mean": "the normalised mean of its members' Option 1 directions",
    "diff_in_means": "its members' mean h_0 minus the discovery harmless prompts' mean (a difference in means)",
}


def _summary(section: dict) -> list[str]:
    a = section["agreement"]
    lines = [
        f"{section['n_clusters']} clusters for {section['n_planted_types']} planted types over {a['n']} held-out "
        f"prompts ({_f(100 * section['noise_share'], 1)}% noise).",
        f"ARI {_f(a['ari'])}, NMI {_f(a['nmi'])} against the planted types (noise as one group); on the "
        f"{a['n_clustered']} clustered prompts ARI {_f(a['ari_clustered'])}, NMI {_f(a['nmi_clustered'])}.",
    ]
    vector = section.get("cluster_vector")
    if vector is not None:
        lines.append(f"Each cluster is evaluated through {CLUSTER_VECTORS.get(vector, vector)} "
                     f"(evaluation.cluster_vector = {vector}); its controls are built the same way.")
    verdict = section["verdict"]
    if verdict is not None:
        # The count is of supported clusters, which an inconclusive verdict has too ("1 supported
        # direction: inconclusive"), so it is named as such rather than as the verdict's count.
        n = verdict.get("n_directions")
        counted = "" if n is None else f" ({n} supported direction{'' if n == 1 else 's'})"
        lines.append(f"Verdict{counted}: {verdict.get('summary', verdict)}")
        lines += _supported_line(section.get("supported"))
    else:
        lines.append("Verdict: not given (the evaluation's verdict is shown here when the caller passes it).")
    return lines


def _supported_line(supported: dict | None) -> list[str]:
    """One sentence setting the verdict's supported clusters against the planted types: the
    count alone can match the planted number by accident."""
    if not supported or not supported["clusters"]:
        return []
    found = ", ".join(f"cluster {k} {t or '—'}" for k, t in zip(supported["clusters"], supported["majority_types"]))
    if supported["one_per_type"]:
        return [f"Supported clusters by majority type: {found}; one per planted type."]
    why = [*(f"more than one is {t}" for t in supported["shared"]), *(f"none is {t}" for t in supported["missing"])]
    return [f"Supported clusters by majority type: {found}; not one per planted type ({'; '.join(why)}), so the "
            "verdict's count is not a recovery of the planted types."]


def _cell(value: str) -> str:
    text = str(value).replace("|", "\\|").replace("\n", " ")
    return text.replace("<", "&lt;").replace(">", "&gt;")


def recovery_markdown(section: dict, level: int = 2) -> str:
    """The section as a markdown fragment (headings start at `level`)."""
    h = "#" * level
    lines = [f"{h} {section['title']}", "", *(f"- {_cell(s)}" for s in _summary(section)), ""]
    for title, columns, rows in _tables(section):
        lines += [f"{h}# {title}", "", "| " + " | ".join(map(_cell, columns)) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(map(_cell, row)) + " |" for row in rows]
        lines.append("")
    return "\n".join(lines)


def recovery_html(section: dict, level: int = 2) -> str:
    """The section as an HTML fragment (no <html> or <body>; headings start at `level`)."""
    e = html.escape
    parts = [f"<section id='recovery'><h{level}>{e(section['title'])}</h{level}><ul>"
             + "".join(f"<li>{e(s)}</li>" for s in _summary(section)) + "</ul>"]
    for title, columns, rows in _tables(section):
        head = "".join(f"<th>{e(c)}</th>" for c in columns)
        body = "".join("<tr>" + "".join(f"<td>{e(v)}</td>" for v in row) + "</tr>" for row in rows)
        parts.append(f"<h{level + 1}>{e(title)}</h{level + 1}><table><tr>{head}</tr>{body}</table>")
    return "".join(parts) + "</section>"
