"""Greedy batched generation: left padding changes nothing, stop tokens end replies, and every
forward pass runs inside the intervention."""

import torch

from refusal_atlas.tasks.engine.direction_engine import DirectionEngine
from refusal_atlas.tasks.model.generation import decoded, first_token_log_probs, greedy_tokens, left_pad, stop_ids
from refusal_atlas.tasks.model.hooks import add_to_residual
from refusal_atlas.tasks.settings import DirectionSettings, EngineSettings
from tests.conftest import PROMPTS


def greedy_generate(model, tokenizer, sequences, pad_id, max_new_tokens, batch_size=16, intervention=None):
    """Decoded greedy replies, as the evaluation and `steer` produce them."""
    return decoded(tokenizer, greedy_tokens(model, tokenizer, sequences, pad_id, max_new_tokens, batch_size,
                                            intervention))
from tests.test_evaluate_support import planted_engine


def _sequences(loaded):
    engine = DirectionEngine(loaded, DirectionSettings(layers=[1]), EngineSettings())
    return [engine.render(t).input_ids for t in PROMPTS], engine.pad_id


def test_left_padding_right_aligns_every_prompt():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0, device=torch.device("cpu"))
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_batched_greedy_replies_equal_one_by_one_and_repeat(tiny64):
    sequences, pad_id = _sequences(tiny64)
    model, tokenizer = tiny64.model, tiny64.tokenizer
    batched = greedy_generate(model, tokenizer, sequences, pad_id, max_new_tokens=6, batch_size=5)
    single = greedy_generate(model, tokenizer, sequences, pad_id, max_new_tokens=6, batch_size=1)
    again = greedy_generate(model, tokenizer, sequences, pad_id, max_new_tokens=6, batch_size=2)
    assert batched == single == again and len(batched) == len(PROMPTS)


def test_first_token_log_probs_with_padding_match_each_prompt_alone(tiny64):
    sequences, pad_id = _sequences(tiny64)
    batched = first_token_log_probs(tiny64.model, sequences, pad_id, batch_size=5)
    for row, seq in enumerate(sequences):
        with torch.no_grad():
            alone = torch.log_softmax(tiny64.model(input_ids=torch.tensor([seq])).logits[0, -1].float(), -1)
        torch.testing.assert_close(batched[row], alone, atol=1e-5, rtol=1e-5)


def test_replies_stop_at_end_tokens_and_follow_the_intervention():
    engine, u = planted_engine()
    model, tokenizer = engine.loaded.model, engine.loaded.tokenizer
    sequences = [engine.render(t).input_ids for t in PROMPTS[:3]]
    assert 0 in stop_ids(tokenizer) and tokenizer.eos_token_id in stop_ids(tokenizer)
    # The stream's +u component makes the phrase token win at every step...
    base = greedy_generate(model, tokenizer, sequences, engine.pad_id, max_new_tokens=4)
    assert base == ["IIII"] * 3
    # ...and with -u added at every position its logit is negative, so token 0 (a stop token,
    # whose logit is 0) ends each reply at once.
    against = greedy_generate(model, tokenizer, sequences, engine.pad_id, max_new_tokens=4,
                              intervention=lambda: add_to_residual(model, 1, torch.tensor(-5 * u)))
    assert against == [""] * 3
