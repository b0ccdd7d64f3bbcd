"""The streamed log-normaliser equals logsumexp over the full logits, value and gradient, and the
layer stack's own attention honours hooks by handing hooked blocks to their own forward."""

import pytest
import torch

from refusal_atlas.tasks.engine.direction_engine import DirectionEngine
from refusal_atlas.tasks.engine.head import log_normaliser_from_states
from refusal_atlas.tasks.engine.prefix import PrefixBatch
from refusal_atlas.tasks.model.hooks import ablate_direction
from refusal_atlas.tasks.settings import DirectionSettings, EngineSettings
from tests.conftest import PROMPTS, wrap
from tests.tiny import tiny_model


def _head(vocab: int, dim: int, bias: bool, dtype=torch.float64) -> torch.nn.Linear:
    gen = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(dim, vocab, bias=bias).to(dtype)
    with torch.no_grad():
        # Wide logits (std about 6), so the running maximum moves between slices.
        head.weight.copy_(torch.randn(head.weight.shape, generator=gen, dtype=dtype))
        if bias:
            head.bias.copy_(3 * torch.randn(vocab, generator=gen, dtype=dtype))
    return head.requires_grad_(False)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunk", [7, 64, 1000])  # slices that do and do not divide V, and one slice
def test_streamed_normaliser_equals_logsumexp_and_its_gradient(bias, chunk):
    head = _head(vocab=301, dim=36, bias=bias)
    gen = torch.Generator().manual_seed(1)
    states = torch.randn((10, 36), generator=gen, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(10, generator=gen, dtype=torch.float64)
    keep = torch.tensor([0, 3, 9])

    lse, kept = log_normaliser_from_states(states, head, keep, chunk)
    (grad,) = torch.autograd.grad((weights * lse).sum(), states)

    logits = head(states)
    want = torch.logsumexp(logits, dim=-1)
    (want_grad,) = torch.autograd.grad((weights * want).sum(), states)
    torch.testing.assert_close(lse, want.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, want_grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(kept, logits[keep].detach(), rtol=0, atol=1e-12)
    # Not vacuous: the slices' maxima differ, so the running rescale was exercised.
    maxima = logits.detach()[:, :chunk].amax(-1), logits.detach().amax(-1)
    assert chunk >= 301 or (maxima[0] < maxima[1]).any()


def test_streamed_normaliser_without_gradient_keeps_nothing_for_backward():
    head = _head(vocab=50, dim=8, bias=False, dtype=torch.float32)
    states = torch.randn((4, 8))
    with torch.no_grad():
        lse, _ = log_normaliser_from_states(states, head, torch.tensor([0]), chunk=16)
    torch.testing.assert_close(lse, torch.logsumexp(head(states), -1))
    assert not lse.requires_grad


def test_half_precision_head_scores_in_float32():
    head = _head(vocab=200, dim=16, bias=False, dtype=torch.bfloat16)
    states = torch.randn((5, 16), dtype=torch.bfloat16, requires_grad=True)
    lse, kept = log_normaliser_from_states(states, head, torch.tensor([1]), chunk=64)
    assert lse.dtype == torch.float32 and kept.dtype == torch.bfloat16
    want = torch.logsumexp(head(states).float(), -1)
    torch.testing.assert_close(lse, want, rtol=1e-3, atol=1e-3)
    (grad,) = torch.autograd.grad(lse.sum(), states)
    assert grad.dtype == torch.bfloat16 and torch.isfinite(grad.float()).all()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_hooked_blocks_run_their_own_forward_in_the_upper_layers(arch):
    """Under an ablation (hooks on every block, its attention and its MLP), the path through
    layers L+1..N-1 gives the hooked full stack's f and gradient: no hook is bypassed."""
    model = tiny_model(arch, layers=4, hidden=32, dtype=torch.float64)
    engine = DirectionEngine(wrap(model), DirectionSettings(), EngineSettings())
    rendered = [engine.render(t) for t in PROMPTS]
    prompts = torch.arange(len(PROMPTS)).repeat_interleave(2)
    layers = torch.tensor([1, 2]).repeat(len(PROMPTS))
    direction = torch.randn(32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    plain = PrefixBatch(model, rendered, engine.target, engine.pad_id).evaluate(prompts, layers)
    with ablate_direction(model, direction):
        upper = PrefixBatch(model, rendered, engine.target, engine.pad_id).evaluate(prompts, layers)
        full = PrefixBatch(model, rendered, engine.target, engine.pad_id, skip_lower_layers=False).evaluate(
            prompts, layers)
    for name in ("f", "grad"):
        torch.testing.assert_close(getattr(upper, name), getattr(full, name), rtol=1e-7, atol=1e-10)
    # The ablation changed f, so the hooks did act on both paths.
    assert (upper.f - plain.f).abs().max() > 1e-4
