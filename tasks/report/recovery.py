"""The report's "recovery" section: did the atlas find the refusal types planted in an organism?

The section as plain data (`recovery_section`, `run_recovery`), which the report builder places
where it wants and the benchmark prints:

- agreement of the clusters with the planted types (ARI, NMI; noise counted as one group, and
  again on clustered prompts only), and the cluster count beside the planted type count;
- a confusion table, clusters (and noise) x planted types, with each cluster's majority type;
- for each cluster direction, where measured: which refusal style it induces when added on
  held-out controls (share of greedy replies opening with each planted style, and none), and
  what ablating it does to each planted type's own-style refusal rate (before → after);
- the verdict of the evaluation (tasks.evaluation.verdict, issue 14) when the caller has one:
  this module only shows it, next to the figures, and never derives one.

The markdown and HTML fragments of the section are in tasks.report.recovery_text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from refusal_atlas.tasks.organism.data import style_of

NOISE = -1


def _label_name(label: int) -> str:
    return "noise" if label == NOISE else f"cluster {label}"


def agreement(labels: Sequence[int], types: Sequence[str]) -> dict:
    """ARI and NMI of clusters against planted types: noise as one group, and clustered only."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    labels = np.asarray(labels)
    types = np.asarray([str(t) for t in types], dtype=object)
    if labels.shape != types.shape:
        raise ValueError(f"{labels.size} cluster labels for {types.size} planted types; pass one per prompt")
    clustered = labels != NOISE

    def scores(t, f) -> tuple[float, float]:
        if t.size < 2:
            return float("nan"), float("nan")
        return float(adjusted_rand_score(t, f)), float(normalized_mutual_info_score(t, f))

    ari, nmi = scores(types, labels)
    ari_c, nmi_c = scores(types[clustered], labels[clustered])
    return {"ari": ari, "nmi": nmi, "ari_clustered": ari_c, "nmi_clustered": nmi_c,
            "n": int(labels.size), "n_clustered": int(clustered.sum())}


def confusion(labels: Sequence[int], types: Sequence[str], planted: Sequence[str] | None = None) -> dict:
    """{'types': [...], 'rows': [{'cluster': name, 'label': k, 'counts': {type: n}, 'size': n,
    'majority': type, 'purity': share}]} with clusters in label order and noise last."""
    labels = np.asarray(labels)
    types = [str(t) for t in types]
    planted = list(planted) if planted is not None else sorted(set(types))
    rows = []
    for label in [*sorted(k for k in set(labels.tolist()) if k != NOISE), *([NOISE] if NOISE in labels else [])]:
        members = [t for t, k in zip(types, labels.tolist()) if k == label]
        counts = {t: members.count(t) for t in planted}
        size = len(members)
        majority = max(planted, key=lambda t: counts[t]) if size else None
        rows.append({"cluster": _label_name(label), "label": int(label), "counts": counts, "size": size,
                     "majority": majority, "purity": counts[majority] / size if size else float("nan")})
    return {"types": planted, "rows": rows}


def majority_types(table: dict) -> dict[int, str | None]:
    """{cluster label: its majority planted type} from a confusion table, noise left out."""
    return {r["label"]: r["majority"] for r in table["rows"] if r["label"] != NOISE}


def supported_types(table: dict, supported: Sequence[int], planted: Sequence[str]) -> dict:
    """The verdict's supported clusters against the planted types: each one's majority type, the
    types two or more of them share, and the planted types none of them has. A verdict can count
    as many directions as there are planted types while two of them split one type and another
    type has none (the fourteenth organism, BENCHMARKS.md); 'one_per_type' says whether it did not."""
    majority = majority_types(table)
    types = [majority.get(int(k)) for k in supported]
    shared = sorted({t for t in types if t is not None and types.count(t) > 1})
    missing = [t for t in planted if t not in types]
    return {"clusters": [int(k) for k in supported], "majority_types": types, "shared": shared,
            "missing": missing, "one_per_type": bool(types) and not shared and not missing}


def recovery_section(
    labels: Sequence[int],
    types: Sequence[str],
    planted: Sequence[str] | None = None,
    induce: Mapping[str, Mapping[str, float]] | None = None,
    ablate: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None,
    verdict: Mapping | None = None,
    title: str = "Recovery of the planted refusal types",
) -> dict:
    """The section as plain data (JSON-ready).

    labels: each held-out planted-type prompt's cluster (-1 noise); types: its planted type.
    induce: {cluster name: {style name or 'none': share of held-out control replies}} with the
    cluster's direction added. ablate: {cluster name: {planted type: {'before': own-style
    share, 'after': own-style share with the direction ablated}}}. verdict: the evaluation's
    verdict as a mapping (at least 'summary'; 'n_directions' if it counts; 'supported', the
    supported clusters' labels, to set them against the planted types), shown as given.
    """
    planted = list(planted) if planted is not None else sorted({str(t) for t in types})
    table = confusion(labels, types, planted)
    majority = majority_types(table)
    return {
        "title": title,
        "planted_types": planted,
        "n_planted_types": len(planted),
        "n_clusters": len(majority),
        "noise_share": float(np.mean(np.asarray(labels) == NOISE)) if len(labels) else float("nan"),
        "types_with_a_majority_cluster": sorted({t for t in majority.values() if t is not None}),
        "agreement": agreement(labels, types),
        "confusion": table,
        "induce": {k: dict(v) for k, v in (induce or {}).items()},
        "ablate": {k: {t: dict(v) for t, v in by_type.items()} for k, by_type in (ablate or {}).items()},
        "verdict": dict(verdict) if verdict is not None else None,
        "supported": (supported_types(table, verdict["supported"], planted)
                      if verdict is not None and verdict.get("supported") is not None else None),
    }


#: A reply is "in style s" when it opens with s's first three words ("I cannot give", "I'm
#: sorry, but", "As an AI,"): a looser reading than the whole sentence, so a refusal that
#: drifts after its opening still counts as the style it chose (tasks.organism.data.style_of).
OPENING_WORDS = 3


def style_shares(replies: Sequence[str], styles: Mapping[str, str]) -> dict[str, float]:
    """{style name or 'none': share of replies opening with it}; one name for a single style."""
    single = len(set(styles.values())) == 1
    names = {c: ("single style" if single else c) for c in styles}
    found = [names[c] if (c := style_of(r, styles, words=OPENING_WORDS)) else "none" for r in replies]
    keys = [*dict.fromkeys(names.values()), "none"]
    return {k: found.count(k) / len(found) if found else float("nan") for k in keys}


def own_style_share(replies: Sequence[str], types: Sequence[str], styles: Mapping[str, str], planted: str) -> float:
    """The share of the replies to prompts of type `planted` that open with that type's style."""
    mine = [r for r, t in zip(replies, types) if t == planted]
    if not mine:
        return float("nan")
    own = {planted: styles[planted]}
    return float(np.mean([style_of(r, own, words=OPENING_WORDS) is not None for r in mine]))


def planted_cosines(cluster_directions: np.ndarray, cluster_layers: Sequence[int], common: np.ndarray | None,
                    planted: np.ndarray, groups: Sequence[Sequence[str]], layer: int, suffix: str = "") -> dict:
    """Cosines of each cluster direction (and the common direction) with each planted direction
    of a mediated organism: {'layer', 'groups': names, 'rows': {name: {group: cosine}}}. Only
    clusters whose directions come from the planted directions' layer are compared (others get
    None): directions at different layers live in different bases. suffix: appended to each row's
    name, to tell one kind of cluster vector from another in a merged table."""
    names = ["+".join(g) for g in groups]
    planted = np.asarray(planted, dtype=np.float64)
    planted = planted / np.linalg.norm(planted, axis=1, keepdims=True)

    def row(v) -> dict[str, float]:
        v = np.asarray(v, dtype=np.float64)
        return {n: float(c) for n, c in zip(names, planted @ (v / np.linalg.norm(v)))}

    rows = {f"cluster {k}{suffix}": (row(v) if int(at) == layer else None)
            for k, (v, at) in enumerate(zip(cluster_directions, cluster_layers))}
    if common is not None:
        rows[f"common direction{suffix}"] = row(common)
    return {"layer": int(layer), "groups": names, "rows": rows}


def run_recovery(labels: Sequence[int], types: Sequence, evaluation, styles: Mapping[str, str],
                 category_of: Mapping[str, str | None], verdict: Mapping | None = None,
                 mechanism: Mapping | None = None) -> dict:
    """The recovery section of an atlas run on an organism.

    labels, types: the clustered discovery rows' cluster labels (-1 noise) and categories; rows
    whose category is not planted are left out. evaluation: the run's EvaluationResult, whose
    judged replies give the style each cluster direction induces on held-out controls and the
    own-style refusal of each planted type before and after ablating it (no extra generation);
    category_of: prompt text -> category, for the judged held-out prompts. mechanism: the
    organism's planted directions against the cluster directions (planted_cosines), when it was
    trained with the mediation loss.
    """
    planted = list(styles)
    keep = [i for i, t in enumerate(types) if t in styles]
    induce, ablate = {}, {}
    if evaluation is not None and evaluation.base.harmless_replies:
        base = evaluation.base
        induce["unmodified"] = style_shares(base.harmless_replies, styles)
        harmful_types = [category_of.get(t) for t in base.harmful_prompts]
        for e in evaluation.of_kind("cluster"):
            if e.induce_replies:
                induce[e.name] = style_shares(e.induce_replies, styles)
            if e.bypass_replies:
                ablate[e.name] = {t: {"before": own_style_share(base.harmful_replies, harmful_types, styles, t),
                                      "after": own_style_share(e.bypass_replies, harmful_types, styles, t)}
                                  for t in planted}
    section = recovery_section([int(labels[i]) for i in keep], [str(types[i]) for i in keep], planted,
                               induce=induce, ablate=ablate, verdict=verdict,
                               title="Recovery of the planted refusal types (discovery prompts; held-out effects)")
    vector = None if evaluation is None else evaluation.settings.cluster_vector
    return {**section, "planted_directions": dict(mechanism) if mechanism is not None else None,
            "cluster_vector": vector}
