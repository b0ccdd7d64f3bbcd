"""The verdict: planted answers end to end (three directions -> "several", 3; one direction plus
noise -> "one shared direction"), and each rule on hand-made inputs."""

import numpy as np
import pytest

from refusal_atlas.tasks.clustering.null_model import NullModelResult
from refusal_atlas.tasks.clustering.stability import ClusterStability
from refusal_atlas.tasks.evaluation.intervals import Estimate
from refusal_atlas.tasks.evaluation.verdict import BY_CONSTRUCTION, ClusterEvidence, MeasureEvidence, decide
from tests.verdict_support import case, toy_evidence

GOOD = Estimate(0.3, 0.2, 0.4, 40)
ZERO = Estimate(0.02, -0.05, 0.09, 40)


def test_three_planted_directions_give_several_three():
    three = case("three")
    evidence, common = toy_evidence("three")
    verdict = decide(three.null, three.stability, evidence, common)
    assert (verdict.kind, verdict.count, verdict.supported) == ("several", 3, (0, 1, 2)), verdict.reason
    assert all(c.passed for c in verdict.criteria if c.decides)
    assert verdict.headline().startswith("Verdict: 3 directions.")
    # Every cluster figure the table shows comes with its interval and sample size.
    assert all("[" in c.figure and "(n=" in c.figure for c in verdict.criteria if "specific" in c.name)


def test_one_direction_plus_noise_gives_one_shared_direction():
    one = case("one")
    evidence, common = toy_evidence("one")
    assert common["induce"].low > 0.5  # the shared direction acts on held-out prompts
    verdict = decide(one.null, one.stability, evidence, common)
    assert (verdict.kind, verdict.count, verdict.supported) == ("one shared direction", 1, ()), verdict.reason
    assert not any(c.passed for c in verdict.criteria if c.name.endswith("beyond the null"))


def null_result(persistence_p, count_p=0.5) -> NullModelResult:
    k = len(persistence_p)
    return NullModelResult(
        space="residual", n_rows=200, observed_clusters=k, observed_noise_share=0.1,
        null_clusters=np.full(20, 2), null_noise_share=np.full(20, 0.8), p_clusters=count_p,
        p_noise=1 / 21, null_max_persistence=np.full(20, 0.05), persistence=np.full(k, 0.3),
        p_persistence=np.asarray(persistence_p, dtype=float), rank=64,
    )


def stability_result(medians) -> ClusterStability:
    medians = np.asarray(medians, dtype=float)
    return ClusterStability(np.repeat(medians[:, None], 20, axis=1), medians, medians >= 0.6, 0.6)


def evidence(k, specificity=GOOD, vs_common=GOOD, share=1.0, bypass=None) -> ClusterEvidence:
    measures = (MeasureEvidence("induce", vs_common, share, 20),)
    if bypass is not None:
        measures += (MeasureEvidence("bypass", bypass, 1.0, 20),)
    return ClusterEvidence(k, specificity, measures)


def test_two_supported_clusters_are_several_even_if_a_third_fails():
    verdict = decide(null_result([1 / 21] * 3), stability_result([0.9, 0.8, 0.3]),
                     [evidence(0), evidence(1), evidence(2)], {"induce": GOOD})
    assert (verdict.kind, verdict.count, verdict.supported) == ("several", 2, (0, 1))


def test_either_measure_may_carry_criterion_four():
    # Cluster 0 does not beat the common direction on induce but does on bypass.
    verdict = decide(null_result([1 / 21] * 2), stability_result([0.9, 0.9]),
                     [evidence(0, vs_common=ZERO, bypass=GOOD), evidence(1)], {"induce": GOOD})
    assert verdict.kind == "several"
    # Beating the common direction is not enough without beating 95% of random subsets.
    verdict = decide(null_result([1 / 21] * 2), stability_result([0.9, 0.9]),
                     [evidence(0, share=0.9), evidence(1)], {"induce": GOOD})
    assert verdict.kind == "inconclusive" and verdict.count == 1
    assert "Only cluster 1" in verdict.reason and "random subsets" in verdict.reason


def test_unstable_specific_clusters_are_inconclusive_and_the_reason_says_why():
    verdict = decide(null_result([1 / 21] * 2), stability_result([0.4, 0.5]),
                     [evidence(0), evidence(1)], {"induce": GOOD})
    assert (verdict.kind, verdict.count) == ("inconclusive", 0)
    assert "fails stability" in verdict.reason


def test_clusters_within_the_null_or_not_specific_leave_one_shared_direction_or_none():
    null = null_result([0.5, 1 / 21])
    clusters = [evidence(0), evidence(1, specificity=ZERO)]
    shared = decide(null, stability_result([0.9, 0.9]), clusters, {"induce": GOOD, "bypass": ZERO})
    assert (shared.kind, shared.count) == ("one shared direction", 1)
    nothing = decide(null, stability_result([0.9, 0.9]), clusters, {"induce": ZERO})
    assert (nothing.kind, nothing.count) == ("none", 0)
    # No clusters at all, and a common direction that acts.
    empty = ClusterStability(np.zeros((0, 20)), np.zeros(0), np.zeros(0, dtype=bool), 0.6)
    assert decide(null_result([]), empty, [], {"induce": GOOD}).kind == "one shared direction"


def test_the_cluster_count_is_shown_but_does_not_decide():
    verdict = decide(null_result([1 / 21] * 2, count_p=0.4), stability_result([0.9, 0.9]),
                     [evidence(0), evidence(1)], {"induce": GOOD})
    count_row = verdict.criteria[0]
    assert not count_row.decides and not count_row.passed and verdict.kind == "several"


def test_missing_held_out_evidence_fails_the_cluster():
    empty = Estimate(float("nan"), float("nan"), float("nan"), 0)
    verdict = decide(null_result([1 / 21] * 2), stability_result([0.9, 0.9]),
                     [evidence(0), evidence(1, specificity=empty, vs_common=empty)], {"induce": GOOD})
    assert verdict.supported == (0,)


def test_inputs_must_cover_every_cluster():
    with pytest.raises(ValueError, match="one of each per cluster"):
        decide(null_result([1 / 21] * 2), stability_result([0.9, 0.9]), [evidence(0)], {"induce": GOOD})


def test_figures_positive_by_construction_are_listed_with_reasons():
    assert "cluster directions beat random directions on f" in BY_CONSTRUCTION
    assert all(reason.endswith(".") and len(reason) > 20 for reason in BY_CONSTRUCTION.values())
    with pytest.raises(TypeError):
        BY_CONSTRUCTION["new"] = "read-only"
