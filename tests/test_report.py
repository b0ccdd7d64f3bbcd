"""The report: every section present, valid PNG data URIs, findings that state what was found."""

import base64
import dataclasses
import io
import json
import re

import numpy as np
import pytest

from refusal_atlas.tasks.clustering.spaces import cluster_directions
from refusal_atlas.tasks.clustering.metrics import compute_metrics
from refusal_atlas.tasks.evaluation.settings import EvalSettings
from refusal_atlas.tasks.evaluation.evaluate import BaseMeasures, DirectionEffect, EvaluationResult, Specificity
from refusal_atlas.tasks.evaluation.judge import summarise
from refusal_atlas.tasks.report.build import ReportInputs, build_report, findings, write_report
from refusal_atlas.tasks.settings import ClusterSettings
from tests.test_cluster_support import planted


def _effect(name, kind, induce, bypass, cluster=None):
    return DirectionEffect(
        name=name, kind=kind, layer=18, cluster=cluster, scale=2.0, induce_df=induce, induce_df_sem=0.1,
        induce_dlog_odds=induce / 2, induce_substring=0.25, induce_strict=0.125, induce_kinds={"compliance": 8},
        bypass_df=bypass, bypass_df_sem=0.1, bypass_dlog_odds=bypass / 2, bypass_substring=0.0, bypass_strict=0.0,
        bypass_kinds={"compliance": 8}, kl_ablate=0.01, kl_ablate_max=0.05,
        induce_examples=["I'm sorry <b>"], bypass_examples=["Sure"],
        induce_df_prompts=(induce - 0.1, induce, induce + 0.1), bypass_df_prompts=(bypass - 0.1, bypass, bypass + 0.1),
        kl_ablate_prompts=(0.0, 0.01, 0.02), n_judged=8)


@pytest.fixture(scope="module")
def inputs():
    x, truth, _ = planted(n=600, dim=64, k=3, seed=2)
    settings = ClusterSettings(bootstraps=2, pca_dim=16, null_sets=0)
    comparison = cluster_directions(x, settings, row_layer=np.full(600, 18))
    categories = [f"topic {t}" if t >= 0 else None for t in truth]
    metrics = {s: compute_metrics(comparison.space(s), settings, categories) for s in ("raw", "residual")}
    k = comparison.result.n_clusters
    effects = [_effect(f"cluster {i}", "cluster", 1.0 + i, -0.5, i) for i in range(k)]
    effects += [_effect("diff-in-means", "baseline", 1.5, -0.2), _effect("random 0", "random", 0.1, 0.0),
                _effect("random 1", "random", -0.1, 0.05)]
    evaluation = EvaluationResult(
        settings=EvalSettings(),
        base=BaseMeasures(-9.0, -8.0, -7.0, -6.0, summarise(["Sure."] * 8), summarise(["Sure."] * 8),
                          32, 32, 8, ["Sure."], ["Sure."]),
        effects=effects,
        specificity=Specificity(np.arange((k + 2) * k, dtype=float).reshape(k + 2, k),
                                [f"cluster {i}" for i in range(k)] + ["diff-in-means", "random (mean)"],
                                [f"cluster {i}" for i in range(k)], [8] * k),
        scales={18: 2.0},
    )
    texts = [f"prompt <{i}> about | topic {t}" for i, t in enumerate(truth)]
    effect = np.random.default_rng(0).normal(size=(600, 3))
    return ReportInputs(comparison, metrics, texts, categories, effect, [12, 18, 24],
                        np.full(600, 18), evaluation, details={"store": "atlas.zarr"})


def _pngs(document: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", document)]


def test_html_report_has_every_section_and_valid_embedded_pngs(inputs, tmp_path):
    report = build_report(inputs)
    page = report.html
    for section in ("Findings", "Raw and residual clustering side by side", "Clusters",
                    "Held-out evaluation with intervals", "Example replies", "Expected by construction, not evidence",
                    "Figures", "Settings"):
        assert f">{section}</h2>" in page, section
    images = _pngs(page)
    assert set(report.images) == {"projection", "cosines", "specificity", "effect_by_layer"}
    assert len(images) == 4
    import matplotlib.image

    for png in images:
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        assert matplotlib.image.imread(io.BytesIO(png), format="png").ndim == 3
    # Text is escaped, so prompts cannot inject markup.
    assert "prompt &lt;" in page and "I&#x27;m sorry &lt;b&gt;" in page and "sorry <b>" not in page
    path = write_report(report, tmp_path / "out" / "report.html")
    assert path.read_text(encoding="utf-8") == page


def test_markdown_twin_and_table_rows(inputs):
    report = build_report(inputs)
    md = report.markdown
    assert md.startswith("# refusal-atlas") and "## Findings" in md and "| metric | raw | residual |" in md
    # Cells escape pipes and angle brackets.
    assert len(_pngs(md)) == 4 and re.search(r"prompt &lt;\d+&gt; about \\\| topic", md)
    k = inputs.comparison.result.n_clusters
    rows = report.cluster_rows
    assert {r["space"] for r in rows} == {"raw", "residual"}
    chosen = [r for r in rows if r["space"] == "residual"]
    assert len(chosen) == k and sum(r["size"] for r in chosen) == (inputs.comparison.residual.labels >= 0).sum()
    assert all(r["layer"] == 18 and r["top_categories"].startswith("topic") for r in chosen)
    assert [r["induce_df"] for r in chosen] == [1.0 + i for i in range(k)]
    assert all(r["induce_df"] is None for r in rows if r["space"] == "raw")
    json.dumps(rows, allow_nan=False)  # plain JSON for a Prefect table artifact


def test_findings_state_counts_and_comparisons(inputs):
    text = findings(inputs)
    m = inputs.metrics
    assert text[0].startswith("Verdict: not reached")
    assert text[1].startswith(f"raw directions: {m['raw'].n_clusters} clusters")
    assert f"residual (common direction removed): {m['residual'].n_clusters} clusters" in text[1]
    joined = " ".join(text)
    assert "Against dataset categories" in joined
    k = inputs.comparison.result.n_clusters
    assert (f"{k} of {k} cluster directions beat every random control at their layer "
            "(expected by construction, not evidence)") in joined
    assert "difference-in-means 1.500" in joined and "highest random control 0.25 [0.07, 0.59] (n=8)" in joined
    assert "refused none of 8 harmful prompts" in joined
    if k > 1:
        assert "Specificity (held-out harmful prompts, direction ablated)" in joined


def test_findings_say_when_everything_is_noise(inputs):
    noisy = {s: dataclasses.replace(m, n_clusters=0, noise_share=1.0) for s, m in inputs.metrics.items()}
    text = findings(dataclasses.replace(inputs, metrics=noisy, evaluation=None))
    assert text[1] == ("raw directions: 0 clusters, all 600 points noise; "
                       "residual (common direction removed): 0 clusters, all 600 points noise.")


def test_each_cluster_is_compared_with_the_controls_at_its_own_layer(inputs):
    def at(layer, name, kind, induce, bypass, cluster=None):
        return dataclasses.replace(_effect(name, kind, induce, bypass, cluster), layer=layer)

    # Cluster 0 (layer 3) loses to both controls at layer 3 and would beat those at layer 5;
    # cluster 1 (layer 5) beats both controls at layer 5. Pairing every cluster with the first
    # layer's baseline would say 0 of 2 beat it on induce; the right answer is 1 of 2.
    effects = [at(3, "cluster 0", "cluster", 2.0, -1.0, 0), at(5, "cluster 1", "cluster", 1.0, -1.0, 1),
               at(3, "diff-in-means @L3", "baseline", 10.0, -2.0), at(5, "diff-in-means @L5", "baseline", 0.5, -0.5),
               at(3, "random 0 @L3", "random", 3.0, 0.0), at(5, "random 0 @L5", "random", 0.1, 0.0)]
    evaluation = dataclasses.replace(inputs.evaluation, effects=effects, specificity=None, scales={3: 1.0, 5: 2.0})
    joined = " ".join(findings(dataclasses.replace(inputs, evaluation=evaluation)))
    induce, bypass = (next(s for s in joined.split(". ") if s.startswith(w)) for w in ("Induce", "Bypass"))
    assert "difference-in-means at L3 10.000, at L5 0.500" in induce
    assert "1 of 2 beat the baseline at their layer" in induce
    assert "1 of 2 cluster directions beat every random control at their layer" in induce
    # Bypass lowers f: cluster 1 (-1.0) beats the layer-5 baseline (-0.5); cluster 0 does not beat L3's (-2.0).
    assert "1 of 2 beat the baseline at their layer" in bypass
    assert "2 of 2 cluster directions beat every random control at their layer" in bypass


def test_report_opens_with_the_verdict_and_its_criteria(inputs):
    from refusal_atlas.tasks.evaluation.verdict import Criterion, Verdict

    verdict = Verdict("inconclusive", 0, "Cluster 0 fails stability.",
                      (Criterion("cluster 0: stable", "median Jaccard 0.31", False, 0),), ())
    report = build_report(dataclasses.replace(inputs, verdict=verdict))
    assert report.findings[0] == "Verdict: inconclusive. Cluster 0 fails stability."
    md = report.markdown
    assert md.index("Verdict: inconclusive") < md.index("## Verdict: criteria and their figures") < md.index("## Raw and")
    assert report.verdict["headline"].startswith("Verdict: inconclusive")
    assert report.verdict["criteria"][0]["figure"] == "median Jaccard 0.31"
