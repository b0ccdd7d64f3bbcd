"""The whole run with the evaluation on: the report and the summary open with the verdict, and a
rerun with no new prompts reads the evaluation back instead of computing it again."""

from __future__ import annotations

import time

import pytest

from refusal_atlas.tasks.evaluation.settings import EvalSettings
from refusal_atlas.tasks.prompts.sources import PromptSource
from refusal_atlas.tasks.settings import AtlasSettings, ClusterSettings, DirectionSettings, ModelSettings
from tests.test_flow import HARMFUL, HARMLESS, _prompts_file, model_dir  # noqa: F401 - the fixture


@pytest.mark.integration
def test_report_opens_with_the_verdict_and_a_rerun_reuses_the_evaluation(prefect_harness, model_dir, tmp_path):
    from refusal_atlas.flows.atlas import refusal_atlas
    from refusal_atlas.flows.run_cli import run_summary

    harmful = _prompts_file(tmp_path / "harmful.jsonl", HARMFUL + [h + " Now." for h in HARMFUL], "harmful")
    harmless = _prompts_file(tmp_path / "harmless.jsonl", HARMLESS + [h + " Now." for h in HARMLESS], "harmless")
    settings = AtlasSettings(
        prompts=[PromptSource(path=str(harmful)), PromptSource(path=str(harmless))],
        store=str(tmp_path / "atlas.zarr"),
        model=ModelSettings(name=str(model_dir)),
        directions=DirectionSettings(layers=[1, 2], steps=2),
        clustering=ClusterSettings(min_cluster_size=2, pca_dim=None, bootstraps=0, null_sets=20),
        evaluation=EvalSettings(n_random=2, n_random_generate=1, n_subsets=3, n_generate=2, max_new_tokens=2),
        report_dir=str(tmp_path / "report"),
    )
    first = refusal_atlas(settings)
    assert first["verdict"] is not None and first["verdict"]["headline"].startswith("Verdict: ")
    assert first["findings"][0] == first["verdict"]["headline"]
    assert run_summary(first).strip().startswith("Verdict: ")
    page = open(first["report"], encoding="utf-8").read()
    assert page.index("Verdict: ") < page.index("Raw and residual clustering side by side")
    assert "expected by construction, not evidence" in page
    cache = list((tmp_path / "report" / "evaluation-cache").glob("evaluation-*.json"))
    assert len(cache) == 1

    start = time.monotonic()
    second = refusal_atlas(settings)
    assert second["computed"] == 0 and second["verdict"] == first["verdict"]
    assert list((tmp_path / "report" / "evaluation-cache").glob("evaluation-*.json")) == cache
    assert time.monotonic() - start < 120  # the evaluation and clustering are read back, not recomputed
