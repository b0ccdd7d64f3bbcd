"""The verdict's effect scale: f or the refusal log-odds, chosen by EvalSettings.effect_scale.

Hand-built effects whose f and log-odds changes disagree, so that reading the wrong scale shows:
the evidence, the held-out table and the evaluation cache must all follow the setting.
"""

import dataclasses

import numpy as np
import pytest

from refusal_atlas.tasks.evaluation.cache import dumps, loads
from refusal_atlas.tasks.evaluation.evaluate import BaseMeasures, DirectionEffect, EvaluationResult
from refusal_atlas.tasks.evaluation.evidence import common_estimates, effect_estimate, signed
from refusal_atlas.tasks.evaluation.settings import EvalSettings
from refusal_atlas.tasks.evaluation.specificity import Specificity
from refusal_atlas.tasks.report.verdict_tables import heldout_table


def _effect(name: str, kind: str, f_change: float, lo_change: float, cluster=None) -> DirectionEffect:
    """Induce raises f by f_change and the log-odds by lo_change on every prompt; bypass lowers
    both by the same amounts."""
    n = 6
    return DirectionEffect(
        name=name, kind=kind, layer=18, cluster=cluster, scale=1.0, induce_df=f_change, induce_df_sem=0.0,
        induce_dlog_odds=lo_change, induce_substring=np.nan, induce_strict=np.nan, induce_kinds={},
        bypass_df=-f_change, bypass_df_sem=0.0, bypass_dlog_odds=-lo_change, bypass_substring=np.nan,
        bypass_strict=np.nan, bypass_kinds={}, kl_ablate=0.0, kl_ablate_max=0.0, induce_examples=[],
        bypass_examples=[], kl_ablate_prompts=(0.0,) * n,
        induce_df_prompts=tuple(f_change + 0.01 * i for i in range(n)),
        bypass_df_prompts=tuple(-f_change - 0.01 * i for i in range(n)),
        induce_dlo_prompts=tuple(lo_change + 0.01 * i for i in range(n)),
        bypass_dlo_prompts=tuple(-lo_change - 0.01 * i for i in range(n)),
    )


def _result(scale: str) -> EvaluationResult:
    effects = [_effect("cluster 0", "cluster", 0.02, 4.0, 0), _effect("common", "common", 0.5, 1.0)]
    base = BaseMeasures(-0.01, 9.0, -0.01, 9.0, None, None, 6, 6, 0, [], [])
    spec = Specificity(np.ones((2, 1)), ["cluster 0", "common"], ["cluster 0"], [3],
                       np.ones((2, 3)), np.zeros(3, dtype=np.int64), scale)
    return EvaluationResult(EvalSettings(effect_scale=scale), base, effects, spec, {18: 1.0})


@pytest.mark.parametrize("measure", ["induce", "bypass"])
def test_signed_reads_the_chosen_scale(measure):
    e = _effect("cluster 0", "cluster", 0.02, 4.0, 0)
    assert signed(e, measure, "f").mean() == pytest.approx(0.045)
    assert signed(e, measure, "log_odds").mean() == pytest.approx(4.025)
    with pytest.raises(ValueError, match="unknown effect scale"):
        signed(e, measure, "logit")


def test_the_common_direction_and_the_table_follow_the_setting():
    on_f, on_lo = common_estimates(_result("f")), common_estimates(_result("log_odds"))
    assert on_f["bypass"].value == pytest.approx(0.525) and on_lo["bypass"].value == pytest.approx(1.025)
    table = heldout_table(_result("log_odds"))
    assert "induce Δlog-odds (rise)" in table.columns
    cluster_row = next(r for r in table.rows if r[0] == "cluster 0")
    assert cluster_row[3].startswith(effect_estimate(_result("log_odds").effects[0], "induce", "log_odds").format()[:4])
    assert "induce Δf (rise)" in heldout_table(_result("f")).columns


def test_the_cache_keeps_both_scales_and_the_specificity_scale():
    result = _result("log_odds")
    again = loads(dumps(result))
    assert again.effects[0].induce_dlo_prompts == result.effects[0].induce_dlo_prompts
    assert again.effects[0].bypass_dlo_prompts == result.effects[0].bypass_dlo_prompts
    assert again.specificity.scale == "log_odds" and again.settings.effect_scale == "log_odds"
    # A file written before the log-odds tuples existed still reads, with them empty.
    older = dataclasses.replace(result.effects[0], induce_dlo_prompts=(), bypass_dlo_prompts=())
    assert loads(dumps(dataclasses.replace(result, effects=[older]))).effects[0].induce_dlo_prompts == ()
