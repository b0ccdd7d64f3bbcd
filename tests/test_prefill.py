"""Running the prompts' common opening once gives the logits and cache of full passes."""

import torch

from refusal_atlas.tasks.model.generation import greedy_tokens
from refusal_atlas.tasks.model.prefill import common_length, prefill
from tests.tiny import tiny_model, tiny_tokenizer

OPENING = list(range(5, 25))  # twenty shared tokens, like a chat template's system turn


def _sequences():
    return [OPENING + [30, 31, 32], OPENING + [40], OPENING + [50, 51, 52, 53, 54, 55]]


def test_common_length_leaves_each_row_its_own_tokens():
    assert common_length(_sequences()) == 20
    assert common_length(_sequences(), min_rest=3) == 18  # the shortest row keeps three tokens
    assert common_length([[1, 2], [1, 3]]) == 1 and common_length([[1, 2]]) == 0


def test_prefilled_logits_equal_each_rows_own_full_pass():
    model = tiny_model("llama", layers=3, hidden=32, dtype=torch.float64)
    pre = prefill(model, _sequences(), pad_id=0, logits_to_keep=2)
    assert pre.common == 20 and pre.mask.shape == (3, 26)
    with torch.no_grad():
        for row, seq in enumerate(_sequences()):
            own = min(2, len(seq) - pre.common)  # kept columns that hold this row's own tokens
            alone = model(input_ids=torch.tensor([seq])).logits[0, -own:]
            torch.testing.assert_close(pre.logits[row, -own:], alone, atol=1e-10, rtol=0)


def test_generation_is_unchanged_by_the_shared_opening():
    model = tiny_model("llama", layers=3, hidden=32, dtype=torch.float64)
    tokenizer = tiny_tokenizer()
    together = greedy_tokens(model, tokenizer, _sequences(), 0, max_new_tokens=5, batch_size=3)
    alone = [greedy_tokens(model, tokenizer, [s], 0, max_new_tokens=5, batch_size=1)[0] for s in _sequences()]
    assert together == alone
