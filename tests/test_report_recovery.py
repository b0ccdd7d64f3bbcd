"""The report's recovery section on synthetic labels: agreement, confusion table, fragments."""

from __future__ import annotations

import json

import numpy as np
import pytest

from refusal_atlas.tasks.report.recovery import agreement, confusion, recovery_html, recovery_markdown, recovery_section

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
    assert "Verdict (3 directions): three directions" in recovery_markdown(with_verdict)
    page = recovery_html(with_verdict)
    assert page.startswith("<section id='recovery'>") and "&lt;b&gt;" in page and "<b>" not in page
    assert "<table>" in recovery_html(section) and "0.95 → 0.10" in recovery_html(section)
