"""Evaluating directions on tiny models: a planted direction must beat random controls.

See `planted_engine` for the model: adding its direction u raises f and ablating u lowers it,
while a random direction is nearly orthogonal to u in both.
"""

import numpy as np
import pytest

from refusal_atlas.tasks.engine.concepts import concept_vectors
from refusal_atlas.tasks.engine.direction_engine import DirectionEngine
from refusal_atlas.tasks.evaluation.settings import EvalSettings
from refusal_atlas.tasks.evaluation.evaluate import EvaluationError, build_candidates, evaluate_directions, sample
from refusal_atlas.tasks.settings import DirectionSettings, EngineSettings
from tests.conftest import PROMPTS
from tests.test_evaluate_support import LAYER, planted_engine

FAST = EvalSettings(n_random=3, n_generate=2, max_new_tokens=3, n_examples=1, batch_size=8)


@pytest.fixture(scope="module")
def planted_result():
    engine, u = planted_engine()
    # The engine's own gradient directions (K = 1), averaged as a cluster direction would be.
    results = engine.compute_many(PROMPTS)
    directions = np.stack([r.direction[0] for r in results])
    cluster = directions.mean(axis=0)
    cluster /= np.linalg.norm(cluster)
    h0 = np.stack([r.h0 for r in results])
    harmful, harmless = np.array([1, 0, 0, 0, 1], bool), np.array([0, 1, 1, 1, 0], bool)
    baseline = concept_vectors(h0, harmful, harmless)["diff_in_means"][0]
    candidates = build_candidates(cluster[None], [LAYER], {LAYER: baseline}, FAST.n_random, FAST.seed)
    members = [[PROMPTS[0], PROMPTS[4]]]
    evaluation = evaluate_directions(engine, candidates, PROMPTS[1:4], [PROMPTS[0], PROMPTS[4]], members, FAST)
    return evaluation, cluster, u


def test_the_engines_gradient_direction_is_the_planted_one(planted_result):
    _, cluster, u = planted_result
    assert cluster @ u > 0.99


def test_adding_the_planted_direction_raises_f_more_than_random_directions_of_the_same_norm(planted_result):
    evaluation, _, _ = planted_result
    (cluster,) = evaluation.of_kind("cluster")
    randoms = evaluation.of_kind("random")
    assert len(randoms) == 3 and len({e.scale for e in evaluation.effects}) == 1  # one norm for all
    assert cluster.induce_df > 0
    assert cluster.induce_df > max(e.induce_df for e in randoms)
    assert cluster.induce_dlog_odds > max(e.induce_dlog_odds for e in randoms)


def test_ablating_the_planted_direction_lowers_f(planted_result):
    evaluation, _, _ = planted_result
    (cluster,) = evaluation.of_kind("cluster")
    assert cluster.bypass_df < 0
    assert cluster.bypass_df < min(e.bypass_df for e in evaluation.of_kind("random"))
    assert cluster.kl_ablate >= 0 and np.isfinite(cluster.kl_ablate_max)


def test_specificity_generations_and_base_measures_are_filled_in(planted_result):
    evaluation, _, _ = planted_result
    spec = evaluation.specificity
    assert spec.rows == ["cluster 0", "diff-in-means", "random (mean)"] and spec.columns == ["cluster 0"]
    assert spec.matrix.shape == (3, 1) and spec.n_prompts == [2]
    assert spec.matrix[0, 0] > spec.matrix[2, 0]
    base = evaluation.base
    assert base.n_harmless == 3 and base.n_harmful == 2 and base.n_generate == 2
    assert base.harmless_judge.n == 2 and len(base.harmless_examples) == 1
    for effect in evaluation.effects:
        assert 0 <= effect.induce_substring <= 1 and 0 <= effect.bypass_strict <= 1
        assert sum(effect.induce_kinds.values()) == 2


def test_candidates_are_unit_seeded_and_named_per_layer():
    rng = np.random.default_rng(0)
    clusters = rng.standard_normal((2, 16))
    a = build_candidates(clusters, [3, 5], {3: rng.standard_normal(16), 5: rng.standard_normal(16)}, 2, seed=7)
    b = build_candidates(clusters, [3, 5], {3: np.ones(16), 5: np.ones(16)}, 2, seed=7)
    assert [c.name for c in a] == ["cluster 0", "cluster 1", "diff-in-means @L3", "diff-in-means @L5",
                                   "random 0 @L3", "random 1 @L3", "random 0 @L5", "random 1 @L5"]
    assert all(abs(np.linalg.norm(c.vector) - 1) < 1e-12 for c in a)
    np.testing.assert_array_equal(a[-1].vector, b[-1].vector)
    with pytest.raises(EvaluationError, match="no difference-in-means vector at layer"):
        build_candidates(clusters, [3, 5], {3: np.ones(16)}, 0, seed=0)


def test_missing_prompts_are_clear_errors(tiny32):
    engine = DirectionEngine(tiny32, DirectionSettings(layers=[1]), EngineSettings())
    candidates = build_candidates(np.ones((1, 32)), [1], None, 0, 0)
    with pytest.raises(EvaluationError, match=r"no \(held-out\) harmless prompts.*Add a harmless source"):
        evaluate_directions(engine, candidates, [], ["x"], settings=FAST)
    with pytest.raises(EvaluationError, match=r"no \(held-out\) harmful prompts"):
        evaluate_directions(engine, candidates, ["x"], [], settings=FAST)
    with pytest.raises(EvaluationError, match="no directions to evaluate"):
        evaluate_directions(engine, [], ["x"], ["y"], settings=FAST)


def test_controls_scored_by_induce_only_show_no_bypass_and_no_subset_null_for_it():
    from refusal_atlas.tasks.evaluation.evidence import cluster_evidence

    engine, u = planted_engine()
    pool = np.random.default_rng(0).standard_normal((6, u.size)) + 3 * u
    candidates = build_candidates(u[None], [LAYER], None, 2, 0, common=pool.mean(axis=0), subset_pool=pool,
                                  cluster_sizes=[3], n_subsets=4, n_random_generate=1)
    settings = FAST.model_copy(update={"controls_bypass": False, "n_random": 2, "n_random_generate": 1})
    result = evaluate_directions(engine, candidates, PROMPTS[1:4], [PROMPTS[0], PROMPTS[4]], [], settings)
    by_kind = {kind: result.of_kind(kind) for kind in ("cluster", "common", "subset", "random")}
    assert all(len(e.bypass_df_prompts) == 2 for kind in ("cluster", "common") for e in by_kind[kind])
    assert all(e.bypass_df_prompts == () and np.isnan(e.bypass_df) for e in by_kind["subset"])
    assert all(len(e.induce_df_prompts) == 3 for e in by_kind["subset"])
    judged, unjudged = by_kind["random"]
    assert len(judged.bypass_df_prompts) == 2 and unjudged.bypass_df_prompts == ()
    measures = {m.measure: m for m in cluster_evidence(result, 0).measures}
    assert measures["induce"].n_subsets == 4
    assert measures["bypass"].n_subsets == 0 and not measures["bypass"].passed()
    assert "no size-matched subsets scored" in measures["bypass"].format()


def test_the_judged_prefix_of_a_sample_is_random_not_the_sources_first_texts():
    # A source sorted by category, like the organism's held-out prompts: the first n_generate of
    # the sample are judged, and kept in input order they came almost only from the first block.
    texts = [f"a{i}" for i in range(60)] + [f"b{i}" for i in range(60)]
    shares = []
    for seed in range(30):
        drawn = sample(texts, 12, seed)
        assert len(drawn) == len(set(drawn)) == 12 and set(drawn) <= set(texts)
        shares.append(np.mean([t.startswith("b") for t in drawn[:8]]))
    assert 0.35 < np.mean(shares) < 0.65
    # Fewer texts than asked: all of them, still in a seeded order, the same for the same seed.
    few = texts[:5]
    assert sorted(sample(few, 12, 3)) == sorted(few) and sample(few, 12, 3) == sample(few, 12, 3)
