"""The verdict wired to the evaluation, on a tiny model with planted refusal directions.

Two planted directions (each raising its own phrase on its own prompt set, see
planted_specificity_support) must give a held-out specificity index above zero with an interval
that excludes zero; one planted direction shared by both sets must not. The evaluation cache
must give back exactly what it stored, and the CLI's summary must open with the verdict.
"""

import dataclasses

import numpy as np
import pytest

from refusal_atlas.tasks.clustering.null_model import NullModelResult
from refusal_atlas.tasks.clustering.significance import Significance, from_attrs, to_attrs
from refusal_atlas.tasks.clustering.stability import ClusterStability
from refusal_atlas.tasks.evaluation.cache import cached, dumps, loads
from refusal_atlas.tasks.evaluation.evaluate import build_candidates, evaluate_directions
from refusal_atlas.tasks.evaluation.evidence import verdict_of
from refusal_atlas.tasks.evaluation.settings import EvalSettings
from refusal_atlas.tasks.evaluation.specificity import specificity_index
from tests.planted_specificity_support import CAR, LAYER, SEA, planted_specificity_engine

FAST = EvalSettings(n_random=3, n_random_generate=1, n_subsets=20, n_generate=2, max_new_tokens=2, batch_size=16)


def _evaluate(two: bool, settings: EvalSettings = FAST):
    """Discovery: the first 6 prompts of each set make the cluster directions; held out: the rest."""
    engine, u = planted_specificity_engine(two)
    discovery = SEA[:6] + CAR[:6]
    directions = np.stack([r.direction[0] for r in engine.compute_many(discovery)])
    clusters = np.stack([directions[:6].mean(axis=0), directions[6:].mean(axis=0)])
    common = directions.mean(axis=0)
    candidates = build_candidates(clusters, [LAYER, LAYER], None, settings.n_random, settings.seed, common=common,
                                  subset_pool=directions, cluster_sizes=[6, 6], n_subsets=settings.n_subsets,
                                  n_random_generate=settings.n_random_generate)
    held = SEA[6:] + CAR[6:]
    return evaluate_directions(engine, candidates, held, held, [SEA[6:], CAR[6:]], settings), u


@pytest.fixture(scope="module")
def two_planted():
    return _evaluate(two=True)[0]


def _significance(n_clusters: int) -> Significance:
    """A clustering whose clusters pass the null and stability, so the held-out figures decide."""
    null = NullModelResult("residual", 12, n_clusters, 0.0, np.zeros(20, dtype=np.int64), np.ones(20), 1.0, 1 / 21,
                           np.zeros(20), np.full(n_clusters, 0.5), np.full(n_clusters, 1 / 21), 2)
    jaccard = np.ones((n_clusters, 20))
    return Significance(null, ClusterStability(jaccard, np.ones(n_clusters), np.ones(n_clusters, bool), 0.6), None)


def test_two_planted_directions_are_specific_on_held_out_prompts(two_planted):
    for k in range(2):
        index = specificity_index(two_planted.specificity, k)
        assert index.n == 12 and index.value > 0 and index.low > 0, index.format()


def test_one_planted_direction_is_not_specific():
    evaluation, _ = _evaluate(two=False)
    for k in range(2):
        index = specificity_index(evaluation.specificity, k)
        assert abs(index.value) < 1e-3 and not index.low > 1e-6, index.format()
    verdict = verdict_of(evaluation, _significance(2))
    assert verdict.kind == "one shared direction" and verdict.count == 1, verdict.headline()


def test_two_planted_directions_give_a_verdict_of_two(two_planted):
    verdict = verdict_of(two_planted, _significance(2))
    assert verdict.kind == "several" and verdict.count == 2, verdict.headline()
    subsets = two_planted.of_kind("subset")
    assert len(subsets) == 40 and all(not e.kl_ablate_prompts or np.isnan(e.kl_ablate) for e in subsets)
    judged = [e for e in two_planted.effects if e.n_judged]
    assert {e.kind for e in judged} == {"cluster", "common", "random"} and len(two_planted.of_kind("random")) == 3
    assert sum(e.kind == "random" for e in judged) == 1


def test_bypass_is_compared_on_each_clusters_own_prompts_so_the_log_odds_agree(two_planted):
    """Criterion 4's bypass reads each cluster's own held-out prompts, with the subsets ablated
    there too. Averaged over both sets' prompts, the log-odds (which add up) tied the cluster
    directions with the common direction and the verdict was "inconclusive"; on their own
    prompts each cluster direction does more, on either scale."""
    rows = [c for c in verdict_of(two_planted, _significance(2)).criteria if "beats the common direction" in c.name]
    assert len(rows) == 2 and all("bypass (own prompts): minus common" in c.figure for c in rows)
    assert all(len(means) == 20 for means in two_planted.specificity.subset_means)
    assert all(not e.bypass_df_prompts for e in two_planted.of_kind("subset"))  # not scored on mixed prompts
    on_log_odds, _ = _evaluate(two=True, settings=FAST.model_copy(update={"effect_scale": "log_odds"}))
    verdict = verdict_of(on_log_odds, _significance(2))
    assert verdict.kind == "several" and verdict.count == 2, verdict.headline()


def test_the_evaluation_cache_gives_back_what_it_stored(two_planted, tmp_path):
    again = loads(dumps(two_planted))
    assert dumps(again) == dumps(two_planted)
    np.testing.assert_array_equal(again.specificity.prompt_effects, two_planted.specificity.prompt_effects)
    result, reused = cached(tmp_path, "k", lambda: two_planted)
    assert not reused and (tmp_path / "evaluation-k.json").exists()

    def fail():
        raise AssertionError("a cached evaluation must not be computed again")

    result, reused = cached(tmp_path, "k", fail)
    assert reused and verdict_of(result, _significance(2)).kind == "several"


def test_significance_survives_the_run_attributes():
    sig = _significance(2)
    back = from_attrs(to_attrs(sig))
    np.testing.assert_array_equal(back.null.p_persistence, sig.null.p_persistence)
    np.testing.assert_array_equal(back.stability.stable, sig.stability.stable)
    assert back.stability.fates is None  # this one was built without fates


def test_stability_fates_survive_the_run_attributes_and_reach_the_verdict():
    sig = _significance(2)
    fates = np.array([[0, 0, 1, 1], [2, 3, -1, 0]])
    stability = dataclasses.replace(sig.stability, jaccard=np.full((2, 4), 0.5), fates=fates)
    back = from_attrs(to_attrs(dataclasses.replace(sig, stability=stability)))
    np.testing.assert_array_equal(back.stability.fates, fates)
    assert back.stability.describe_fates(0) == "kept in 2, split in 2 of 4 resamples"
    assert back.stability.describe_fates(1) == "kept in 1, merged in 1, dissolved in 1 of 3 resamples"
    # Runs stored before fates were recorded have no "fates" key, and read as None.
    old = to_attrs(sig)
    del old["stability"]["fates"]
    assert from_attrs(old).stability.fates is None and from_attrs(old).stability.describe_fates(0) == ""


def test_the_verdict_says_what_became_of_a_cluster(two_planted):
    sig = _significance(2)
    fates = np.array([[0, 0, 1, 1], [0, 0, 0, 0]])
    stability = dataclasses.replace(sig.stability, jaccard=np.ones((2, 4)), fates=fates)
    verdict = verdict_of(two_planted, dataclasses.replace(sig, stability=stability))
    figures = {c.name: c.figure for c in verdict.criteria}
    assert figures["cluster 0: stable"].endswith("; kept in 2, split in 2 of 4 resamples")
    assert figures["cluster 1: stable"].endswith("; kept in 4 of 4 resamples")


def test_the_cli_summary_opens_with_the_verdict(two_planted):
    from refusal_atlas.flows.run_cli import run_summary
    from refusal_atlas.tasks.report.verdict_tables import verdict_dict

    verdict = verdict_dict(verdict_of(two_planted, _significance(2)))
    result = {"prompts": 24, "new": 0, "computed": 0, "cached": 24, "stored": 0, "failed": 0,
              "extraction": {"failures": []}, "clusters": {"chosen": "residual", "spaces": {}},
              "cluster_rows": [], "findings": [], "store": "s.zarr", "report": "r.html", "verdict": verdict}
    lines = run_summary(result).strip().splitlines()
    assert lines[0].startswith("Verdict: 2 directions.")
    assert any("specific (held out)" in line and "[" in line for line in lines[1:])


def test_significance_without_clusters_survives_the_run_attributes():
    back = from_attrs(to_attrs(_significance(0)))
    assert back.null.observed_clusters == 0 and back.stability.median.shape == (0,)
