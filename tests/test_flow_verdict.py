"""The whole run with the evaluation on: the report and the summary open with the verdict, and a
rerun with no new prompts reads the evaluation back instead of computing it again."""

from __future__ import annotations

import time

import numpy as np
import pytest

from refusal_atlas.tasks.evaluation.settings import EvalSettings
from refusal_atlas.tasks.prompts.sources import PromptSource
from refusal_atlas.tasks.settings import AtlasSettings, ClusterSettings, DirectionSettings, ModelSettings
from tests.test_flow import HARMFUL, HARMLESS, _prompts_file, model_dir  # noqa: F401 - the fixture


def _settings(tmp_path, model_dir, clustering: ClusterSettings, evaluation: EvalSettings) -> AtlasSettings:
    """A run on the tiny model's harmful and harmless prompts (each also with " Now." added)."""
    harmful = _prompts_file(tmp_path / "harmful.jsonl", HARMFUL + [h + " Now." for h in HARMFUL], "harmful")
    harmless = _prompts_file(tmp_path / "harmless.jsonl", HARMLESS + [h + " Now." for h in HARMLESS], "harmless")
    return AtlasSettings(
        prompts=[PromptSource(path=str(harmful)), PromptSource(path=str(harmless))],
        store=str(tmp_path / "atlas.zarr"), model=ModelSettings(name=str(model_dir)),
        directions=DirectionSettings(layers=[1, 2], steps=2), clustering=clustering, evaluation=evaluation,
        report_dir=str(tmp_path / "report"),
    )


@pytest.mark.integration
def test_report_opens_with_the_verdict_and_a_rerun_reuses_the_evaluation(prefect_harness, model_dir, tmp_path):
    from refusal_atlas.flows.atlas import refusal_atlas
    from refusal_atlas.flows.run_cli import run_summary

    settings = _settings(tmp_path, model_dir, ClusterSettings(min_cluster_size=2, pca_dim=None, bootstraps=0, null_sets=20),
                         EvalSettings(n_random=2, n_random_generate=1, n_subsets=3, n_generate=2, max_new_tokens=2))
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


@pytest.mark.integration
def test_clusters_evaluated_through_their_difference_in_means(prefect_harness, model_dir, tmp_path):
    """evaluation.cluster_vector = diff_in_means on a real store: each cluster's vector is its
    discovery members' mean h_0 minus the discovery harmless mean, recomputed here from the
    store's xarray view, and the run evaluates (and caches) it apart from the default."""
    from refusal_atlas.flows.atlas import refusal_atlas
    from refusal_atlas.storage import AtlasStore
    from refusal_atlas.tasks.clustering.load import load_store_clustering
    from refusal_atlas.tasks.evaluation.split import heldout_mask
    from refusal_atlas.tasks.steps.cluster_vectors import cluster_vectors, discovery_harmless_means

    settings = _settings(
        tmp_path, model_dir, ClusterSettings(layer=2, min_cluster_size=2, pca_dim=None, bootstraps=0, null_sets=5),
        EvalSettings(n_random=2, n_random_generate=0, n_subsets=3, n_generate=0, cluster_vector="diff_in_means"))
    result = refusal_atlas(settings)
    assert result["verdict"] is not None
    store = AtlasStore.open(result["store"])
    clustering = load_store_clustering(store, result["clusters"]["run"])
    ds = store.to_xarray(done_only=True)
    ids = [str(i) for i in ds["prompt_id"].values]
    labels = np.asarray([str(v) for v in ds["label"].values], dtype=object)
    cs = clustering.comparison.settings
    held = heldout_mask(ids, cs.heldout_fraction, cs.split_seed, list(labels), [c or None for c in ds["category"].values])
    at = list(store.layers).index(2)
    h0 = np.asarray(ds["h0"].values[:, at], dtype=np.float64)
    harmless_mean = h0[~held & (labels == "harmless")].mean(axis=0)
    by_id = dict(zip(ids, h0))
    members = np.array([by_id[i] for i in clustering.rows.prompt_ids])
    vectors = cluster_vectors("diff_in_means", store, clustering, discovery_harmless_means(store, clustering))
    k_labels = np.asarray(clustering.comparison.result.labels)
    assert clustering.comparison.result.n_clusters >= 1
    for k in range(clustering.comparison.result.n_clusters):
        want = members[k_labels == k].mean(axis=0) - harmless_mean
        np.testing.assert_allclose(vectors.directions[k], want / np.linalg.norm(want), atol=1e-6)
    np.testing.assert_allclose(vectors.pool, members - harmless_mean, atol=1e-5)
    again = refusal_atlas(settings.model_copy(update={"evaluation": EvalSettings(
        n_random=2, n_random_generate=0, n_subsets=3, n_generate=0)}))
    assert again["computed"] == 0
    assert len(list((tmp_path / "report" / "evaluation-cache").glob("evaluation-*.json"))) == 2
