"""The recovery benchmarks' own logic: bench_recovery.py's --planted swap (another set of planted-type
prompts, the rest kept), and bench_recovery_verdict_rule.py's candidates and verdict-side tests."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from refusal_atlas.tasks.prompts.sources import parse_source

ROOT = Path(__file__).resolve().parents[1]


def _bench(name: str = "bench_recovery"):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_planted_source_is_replaced_and_its_options_and_the_controls_kept():
    prompts = [parse_source("organism-planted#seed=3&limit=40"), parse_source("organism-controls#limit=48")]
    swapped = _bench().swap_planted(prompts, "organism-fresh")
    assert [s.path for s in swapped] == ["organism-fresh", "organism-controls"]
    assert (swapped[0].limit, swapped[0].seed) == (40, 3) and swapped[1] == prompts[1]


def test_settings_without_the_held_out_planted_prompts_are_refused_by_name():
    with pytest.raises(SystemExit, match="no 'organism-planted'"):
        _bench().swap_planted([parse_source("organism-controls")], "organism-fresh")


def _row(pca, mcs, ms, size, median, least, space="residual", selection="eom"):
    return {"space": space, "selection": selection, "pca_dim": pca, "min_cluster_size": mcs, "min_samples": ms,
            "size": size, "median_ari": median, "min_ari": least}


def test_verdict_rule_candidates_are_near_the_best_score_and_ranked_by_worst_draw_then_fewest_changes():
    rows = [
        _row(16, 3, None, 150, 0.88, 0.60), _row(16, 3, None, 180, 0.88, 0.88),   # best score, bad worst draw
        _row(8, 5, None, 150, 0.87, 0.85), _row(8, 5, None, 180, 0.87, 0.87),      # one field changed
        _row(8, 5, 2, 150, 0.87, 0.85), _row(8, 5, 2, 180, 0.87, 0.87),            # two fields changed
        _row(32, 5, None, 150, 0.80, 0.79), _row(32, 5, None, 180, 0.80, 0.80),    # the defaults: too far
        _row(8, 8, None, 56, 0.99, 0.99),                                          # too small to count
        _row(8, 8, None, 150, 0.99, 0.99, space="raw"), _row(8, 8, None, 150, 0.99, 0.99, selection="leaf"),
    ]
    ranked = _bench("bench_recovery_verdict_rule").candidates(rows, within=0.01, near=150)
    assert [tuple(c["setting"].values()) for c in ranked] == [(8, 5, None), (8, 5, 2), (16, 3, None)]
    assert [c["changed"] for c in ranked] == [1, 2, 2]
    assert ranked[0]["worst"] == 0.85 and ranked[2]["score"] == 0.88


def test_verdict_rule_passes_one_cluster_per_planted_type_and_fails_a_merge():
    from refusal_atlas.tasks.settings import ClusterSettings
    from tests.verdict_support import three_directions

    rows, truth, _ = three_directions(n=120)
    categories = np.asarray(["medical", "legal", "financial"], dtype=object)[truth]
    side = _bench("bench_recovery_verdict_rule").verdict_side
    three = side(rows, categories, ClusterSettings(bootstraps=0), "residual", n_sets=20)
    assert three["passes"] and three["clusters"] == 3 and sorted(three["types"]) == ["financial", "legal", "medical"]
    assert max(three["p"]) < 0.05 and min(three["jaccard"]) >= 0.6
    # Two planted types given one name: three clusters, but not one per planted type.
    merged = side(rows, np.where(categories == "legal", "medical", categories), ClusterSettings(bootstraps=0),
                  "residual", n_sets=20)
    assert merged["clusters"] == 3 and not merged["passes"]
