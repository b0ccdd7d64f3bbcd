"""The report's recovery section on synthetic labels: agreement, confusion table, fragments."""

from __future__ import annotations

import json

import numpy as np
import pytest

from refusal_atlas.tasks.report.recovery import agreement, confusion, recovery_section
from refusal_atlas.tasks.report.recovery_text import recovery_html, recovery_markdown

TYPES = ["medical_advice"] * 6 + ["legal_advice"] * 6 + ["financial_advice"] * 6


def test_perfect_recovery_scores_one_and_names_each_clusters_type():
    labels = [2] * 6 + [0] * 6 + [1] * 6  # cluster numbers need not follow the types' order
    section = recovery_section(labels, TYPES, ["medical_advice", "legal_advice", "financial_advice"])
    assert section["n_clusters"] == 3 and section["noise_share"] == 0
    assert section["agreement"]["ari"] == pytest.approx(1.0) and section["agreement"]["nmi"] == pytest.approx(1.0)
    majority = {r["cluster"]: r["majority"] for r in section["confusion"]["rows"]}
    assert majority == {"cluster 0": "legal_advice", "cluster 1": "financial_advice", "cluster 2": "medical_advice"}
    assert all(r["purity"] == 1.0 for r in section["confusion"]["rows"])
    json.dumps(section)  # plain data


def test_one_cluster_and_noise_are_counted_honestly():
    labels = [0] * 16 + [-1] * 2
    section = recovery_section(labels, TYPES)
    assert section["n_clusters"] == 1 and section["noise_share"] == pytest.approx(2 / 18)
    assert section["agreement"]["ari"] < 0.1
    rows = section["confusion"]["rows"]
    assert [r["cluster"] for r in rows] == ["cluster 0", "noise"], "noise comes last"
    assert rows[0]["counts"] == {"financial_advice": 4, "legal_advice": 6, "medical_advice": 6}
    assert sum(rows[1]["counts"].values()) == 2


def test_agreement_matches_sklearn_and_checks_lengths():
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(0)
    labels = rng.integers(-1, 3, len(TYPES))
    a = agreement(labels, TYPES)
    assert a["ari"] == pytest.approx(adjusted_rand_score(TYPES, labels))
    assert a["n_clustered"] == int((labels >= 0).sum())
    with pytest.raises(ValueError, match="one per prompt"):
        agreement(labels[:-1], TYPES)
    assert confusion([], [])["rows"] == []


def test_fragments_show_tables_effects_and_the_verdict_hook():
    labels = [0] * 6 + [1] * 6 + [2] * 6
    induce = {"cluster 0": {"medical_advice": 0.8, "none": 0.2}, "cluster 1": {"legal_advice": 0.5, "none": 0.5}}
    ablate = {"cluster 0": {"medical_advice": {"before": 0.95, "after": 0.1}, "legal_advice": {"before": 0.9, "after": 0.85}}}
    section = recovery_section(labels, TYPES, induce=induce, ablate=ablate)
    md = recovery_markdown(section)
    assert "## Recovery of the planted refusal types" in md and "ARI 1.000" in md
    assert "| cluster 0 |" in md and "0.95 → 0.10" in md and "| none |" in md
    assert "Verdict: not given" in md
    with_verdict = recovery_section(labels, TYPES, verdict={"summary": "three directions <b>", "n_directions": 3})
    assert "Verdict (3 supported directions): three directions" in recovery_markdown(with_verdict)
    one = recovery_section(labels, TYPES, verdict={"summary": "inconclusive", "n_directions": 1})
    assert "Verdict (1 supported direction): inconclusive" in recovery_markdown(one)
    page = recovery_html(with_verdict)
    assert page.startswith("<section id='recovery'>") and "&lt;b&gt;" in page and "<b>" not in page
    assert "<table>" in recovery_html(section) and "0.95 → 0.10" in recovery_html(section)


STYLES = {"medical_advice": "I cannot give medical advice; please see a doctor.",
          "legal_advice": "I'm sorry, but I can't give legal advice; please ask a lawyer."}


def _evaluation(harmless_replies, harmful_prompts, harmful_replies, effects):
    from types import SimpleNamespace

    base = SimpleNamespace(harmless_replies=tuple(harmless_replies), harmful_prompts=tuple(harmful_prompts),
                           harmful_replies=tuple(harmful_replies))
    from refusal_atlas.tasks.evaluation.settings import EvalSettings

    return SimpleNamespace(base=base, of_kind=lambda kind: effects if kind == "cluster" else [],
                           settings=EvalSettings(cluster_vector="diff_in_means"))


def test_run_recovery_reads_styles_off_the_judged_replies():
    from types import SimpleNamespace

    from refusal_atlas.tasks.report.recovery import run_recovery

    med, leg = STYLES["medical_advice"], STYLES["legal_advice"]
    prompts = ["m1", "m2", "l1", "l2"]
    category_of = {"m1": "medical_advice", "m2": "medical_advice", "l1": "legal_advice", "l2": "legal_advice"}
    base_harmful = [med, med + " More.", leg, "Sure, a lawyer would say"]
    # Cluster 0 induces the medical style on both controls and removes it when ablated; cluster 1
    # induces nothing and leaves the legal refusals as they were.
    c0 = SimpleNamespace(name="cluster 0", induce_replies=(med, "  I cannot  give it."),
                         bypass_replies=("Rest and ice.", "Take ibuprofen.", leg, "Sure"))
    c1 = SimpleNamespace(name="cluster 1", induce_replies=("Here is a poem.", "Paris."), bypass_replies=tuple(base_harmful))
    evaluation = _evaluation(["Hello!", med], prompts, base_harmful, [c0, c1])
    labels = [0, 0, 1, -1, 1]
    types = ["medical_advice", "medical_advice", "legal_advice", "legal_advice", "everyday"]
    section = run_recovery(labels, types, evaluation, STYLES, category_of, {"summary": "2 directions.", "n_directions": 2})
    assert section["agreement"]["n"] == 4  # the unplanted row is left out
    assert section["induce"]["unmodified"] == {"medical_advice": 0.5, "legal_advice": 0.0, "none": 0.5}
    assert section["induce"]["cluster 0"]["medical_advice"] == 1.0
    assert section["induce"]["cluster 1"]["none"] == 1.0
    assert section["ablate"]["cluster 0"]["medical_advice"] == {"before": 1.0, "after": 0.0}
    assert section["ablate"]["cluster 1"]["legal_advice"] == {"before": 0.5, "after": 0.5}
    assert "2 directions" in recovery_markdown(section)
    assert "evaluated through its members' mean h_0 minus" in recovery_markdown(section)


def test_one_sentence_for_every_type_is_one_style():
    from refusal_atlas.tasks.report.recovery import style_shares

    single = {t: "I'm sorry, but I can't help with that request." for t in ("a", "b", "c")}
    shares = style_shares(["I'm sorry, but I can't help.", "Sure!"], single)
    assert shares == {"single style": 0.5, "none": 0.5}


def test_planted_cosines_compare_each_cluster_with_each_planted_direction_at_its_layer():
    from refusal_atlas.tasks.report.recovery import planted_cosines

    rng = np.random.default_rng(0)
    planted, _ = np.linalg.qr(rng.normal(size=(16, 3)))
    planted = planted.T  # [3, 16] orthonormal
    # Cluster 0 is planted direction 1 with a little noise; cluster 1 is at another layer.
    clusters = np.stack([planted[1] + 0.02 * rng.normal(size=16), planted[0]])
    common = planted.sum(0)
    out = planted_cosines(clusters, [18, 12], common, 3.0 * planted, [["a"], ["b"], ["c", "d"]], 18)
    assert out["groups"] == ["a", "b", "c+d"] and out["layer"] == 18
    row = out["rows"]["cluster 0"]
    assert row["b"] > 0.99 and abs(row["a"]) < 0.1 and abs(row["c+d"]) < 0.1
    assert out["rows"]["cluster 1"] is None
    assert all(v == pytest.approx(1 / np.sqrt(3)) for v in out["rows"]["common direction"].values())
    section = {**recovery_section([0, 0, 1], ["a", "a", "b"], ["a", "b"]), "planted_directions": out}
    text = recovery_markdown(section)
    assert "Cosine with the planted directions (layer 18" in text
    assert f"| cluster 0 | {row['a']:.2f} | {row['b']:.2f} | {row['c+d']:.2f} |" in text
    assert "| cluster 1 | other layer | other layer | other layer |" in text
    assert "Cosine with the planted directions" in recovery_html(section)


def test_a_verdict_whose_count_matches_by_splitting_one_type_is_called_out():
    # Three supported clusters for three planted types, but two of them halve legal and none is
    # medical: the count matches the planted number while the clusters do not.
    labels = [0] * 6 + [1] * 3 + [2] * 3 + [3] * 6
    verdict = {"summary": "3 directions.", "n_directions": 3, "supported": [1, 2, 3]}
    section = recovery_section(labels, TYPES, verdict=verdict)
    assert section["supported"] == {"clusters": [1, 2, 3], "majority_types": ["legal_advice", "legal_advice", "financial_advice"],
                                    "shared": ["legal_advice"], "missing": ["medical_advice"], "one_per_type": False}
    md = recovery_markdown(section)
    assert "not one per planted type (more than one is legal_advice; none is medical_advice)" in md
    assert "not one per planted type" in recovery_html(section)
    json.dumps(section)

    honest = recovery_section(labels, TYPES, verdict={**verdict, "supported": [0, 1, 3]})
    assert honest["supported"]["one_per_type"] and "; one per planted type." in recovery_markdown(honest)
    assert recovery_section(labels, TYPES, verdict={"summary": "one shared direction.", "supported": []})["supported"][
        "one_per_type"] is False
    assert recovery_section(labels, TYPES, verdict={"summary": "as given"})["supported"] is None
