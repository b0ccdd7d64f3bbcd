"""Side effects: KL(base || intervened) over the first reply tokens of the base model's own
greedy replies, teacher-forced, one mean per prompt."""

import numpy as np
import pytest
import torch

from refusal_atlas.tasks.engine.direction_engine import DirectionEngine
from refusal_atlas.tasks.evaluation.measures import ForcedReplies, forced_base_replies, reply_kl
from refusal_atlas.tasks.model.generation import forced_log_probs, intervened
from refusal_atlas.tasks.model.hooks import ablate_direction, add_to_residual
from refusal_atlas.tasks.settings import DirectionSettings, EngineSettings
from tests.conftest import PROMPTS

K = 8


def _forced(loaded) -> tuple[ForcedReplies, int]:
    engine = DirectionEngine(loaded, DirectionSettings(layers=[1]), EngineSettings())
    rendered = [engine.render(t) for t in PROMPTS]
    return forced_base_replies(loaded.model, loaded.tokenizer, rendered, engine.pad_id, K, batch_size=3), engine.pad_id


def _hand_kl(model, sequence, reply, intervention) -> float:
    """One prompt, unpadded, one forward pass per reply position: the definition, step by step."""
    values = []
    for k in range(min(K, len(reply) + 1)):
        ids = torch.tensor([[*sequence, *reply[:k]]])
        with torch.no_grad():
            log_p = torch.log_softmax(model(input_ids=ids).logits[0, -1].double(), -1)
            with intervened(intervention):
                log_q = torch.log_softmax(model(input_ids=ids).logits[0, -1].double(), -1)
        values.append(float((log_p.exp() * (log_p - log_q)).sum()))
    return float(np.mean(values))


def test_a_zero_norm_intervention_costs_nothing(tiny64):
    forced, pad_id = _forced(tiny64)
    zero = torch.zeros(32, dtype=torch.float64)
    kl = reply_kl(tiny64.model, forced, pad_id, 3, lambda: add_to_residual(tiny64.model, 1, zero))
    assert kl.shape == (len(PROMPTS),)
    np.testing.assert_allclose(kl, 0.0, atol=1e-12)


def test_a_large_random_intervention_costs_something_on_every_prompt(tiny64):
    forced, pad_id = _forced(tiny64)
    vector = 20 * torch.randn(32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    kl = reply_kl(tiny64.model, forced, pad_id, 3, lambda: add_to_residual(tiny64.model, 1, vector))
    assert np.all(kl > 1e-3)


def test_batched_teacher_forced_kl_equals_a_loop_over_positions(tiny64):
    model = tiny64.model
    forced, pad_id = _forced(tiny64)
    # The base replies are greedy, so the base distributions' argmax is each reply token.
    for row, reply in enumerate(forced.replies):
        assert forced.log_probs[row, : len(reply)].argmax(-1).tolist() == reply[:K]
    # Cut the replies short as if they had ended early at different points, so masking is tested
    # too (a random model rarely emits a stop token), and recompute the base distributions.
    replies = [reply[:n] for reply, n in zip(forced.replies, (0, 1, 3, 7, 8))]
    log_probs, mask = forced_log_probs(model, forced.sequences, replies, pad_id, K, batch_size=3)
    assert mask.sum(-1).tolist() == [1, 2, 4, 8, 8]
    cut = ForcedReplies(forced.sequences, replies, log_probs, mask)
    direction = torch.randn(32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    intervention = lambda: ablate_direction(model, direction)  # noqa: E731
    batched = reply_kl(model, cut, pad_id, 3, intervention)
    by_hand = [_hand_kl(model, seq, reply, intervention) for seq, reply in zip(cut.sequences, replies)]
    np.testing.assert_allclose(batched, by_hand, rtol=1e-6, atol=1e-10)
    assert np.all(batched > 0)


def test_teacher_forcing_needs_one_reply_per_prompt(tiny64):
    with pytest.raises(ValueError, match="one reply per prompt"):
        forced_log_probs(tiny64.model, [[1, 2]], [], 0, K)
