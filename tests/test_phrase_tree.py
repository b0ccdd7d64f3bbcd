"""The phrase tree's scoring: log P(phrase) from picked logits and a logsumexp equals
log_softmax read at the phrase's tokens, whichever way the logits are picked."""

import pytest
import torch

from refusal_atlas.tasks.engine.phrase_tree import TreeTensors, build_step_tree
from refusal_atlas.tasks.engine.targets import log_normaliser

PHRASES = [[5, 6], [5, 7, 8], [9, 10, 11]]  # "I cannot", "I can't ..."-like: two share a first token


def _tree():
    trees = [build_step_tree([3], PHRASES), build_step_tree([4, 2], PHRASES)]
    return trees, TreeTensors(trees, torch.device("cpu"), pad_id=0)


def test_a_phrase_is_its_tokens_log_softmax_summed():
    trees, tensors = _tree()
    gen = torch.Generator().manual_seed(0)
    n_nodes, vocab = tensors.tokens.shape[1], 16
    logits = torch.randn((2, n_nodes, vocab), generator=gen, dtype=torch.float64)
    prompts = torch.tensor([0, 1, 1])
    rows = logits[prompts]
    got = tensors.phrase_log_probs(tensors.picked_logits(rows, prompts), log_normaliser(rows), prompts)
    log_probs = torch.log_softmax(rows, dim=-1)
    for q, b in enumerate(prompts.tolist()):
        for p, pairs in enumerate(trees[b].predictions):
            want = sum(log_probs[q, node, token] for node, token in pairs)
            assert got[q, p].item() == pytest.approx(want.item(), abs=1e-12)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5), (torch.bfloat16, 0.0)])
def test_logits_picked_from_the_hidden_states_are_the_heads_own(dtype, tol):
    """A dot product with the head's rows gives the head's matmul at those entries (bfloat16:
    rounded alike, so within one unit in the last place)."""
    _, tensors = _tree()
    gen = torch.Generator().manual_seed(1)
    head = torch.nn.Linear(24, 16, bias=True).to(dtype)
    with torch.no_grad():
        head.weight.copy_(torch.randn(16, 24, generator=gen))
        head.bias.copy_(torch.randn(16, generator=gen))
    normed = torch.randn((3, tensors.tokens.shape[1], 24), generator=gen).to(dtype)
    prompts = torch.tensor([1, 0, 1])
    direct = tensors.picked_logits(head(normed), prompts)
    picked = tensors.picked_from_hidden(normed, head, prompts)
    assert picked.dtype == dtype
    if dtype == torch.bfloat16:
        ulp = direct.float().abs() * 2.0**-7
        assert torch.all((picked.float() - direct.float()).abs() <= ulp + 1e-6)
    else:
        torch.testing.assert_close(picked, direct, atol=tol, rtol=tol)
