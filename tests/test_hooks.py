"""Hooks read and write the residual stream where transformers says it is, and always go away."""

import pytest
import torch

from refusal_atlas.tasks.model.chat import render_prompt
from refusal_atlas.tasks.model.hooks import (
    LayerIndexError,
    ablate_direction,
    add_to_residual,
    capture_residual,
    decoder_layers,
    edit_residual,
    resolve_layers,
)
from tests.conftest import PROMPTS
from tests.tiny import CHATML, tiny_model, tiny_tokenizer


def _batch(tokenizer, texts):
    """Left-padded ids [B, T], mask and position ids following the mask, plus each row's last index."""
    rendered = [render_prompt(tokenizer, CHATML, t) for t in texts]
    width = max(len(r.input_ids) for r in rendered)
    ids = torch.full((len(texts), width), tokenizer.pad_token_id)
    mask = torch.zeros((len(texts), width), dtype=torch.long)
    for row, r in enumerate(rendered):
        ids[row, width - len(r.input_ids):] = torch.tensor(r.input_ids)
        mask[row, width - len(r.input_ids):] = 1
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_capture_equals_output_hidden_states(arch):
    model = tiny_model(arch, layers=4)
    ids, mask, positions = _batch(tiny_tokenizer(), PROMPTS[:3])
    last = torch.full((ids.shape[0],), ids.shape[1] - 1)
    middle = torch.tensor([ids.shape[1] - 3] * ids.shape[0])
    # hidden_states[L + 1] is layer L's output, except that transformers applies the final norm
    # to the last entry, so the last layer is compared before that norm below.
    for where in (last, middle):
        with capture_residual(model, [0, 1, 2], where) as captured:
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions, output_hidden_states=True)
        rows = torch.arange(ids.shape[0])
        for layer in (0, 1, 2):
            expected = out.hidden_states[layer + 1][rows, where]
            torch.testing.assert_close(captured[layer], expected, rtol=0, atol=0)


def test_hooks_are_removed_after_an_exception():
    model = tiny_model("llama")
    layers = decoder_layers(model)

    def boom(hidden):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with edit_residual(model, {1: boom}):
            model(input_ids=torch.tensor([[5, 6, 7]]))
    assert all(not layer._forward_hooks for layer in layers)
    with ablate_direction(model, torch.ones(32)):
        pass
    assert all(not layer._forward_hooks for layer in layers)
    assert not model.get_input_embeddings()._forward_hooks


def test_add_and_ablate_change_the_stream_as_defined():
    model = tiny_model("llama")
    ids = torch.tensor([[5, 6, 7, 8]])
    vector = torch.randn(32)
    with capture_residual(model, [2], torch.tensor([3])) as base:
        model(input_ids=ids)
    with add_to_residual(model, 2, vector), capture_residual(model, [2], torch.tensor([3])) as added:
        model(input_ids=ids)
    # The capture hook is registered after the addition, so it sees the edited output.
    torch.testing.assert_close(added[2][0], base[2][0] + vector)
    unit = vector / vector.norm()
    with ablate_direction(model, vector), capture_residual(model, [1, 3], torch.tensor([2])) as ablated:
        model(input_ids=ids)
    for layer in (1, 3):
        assert abs(float(ablated[layer][0] @ unit)) < 1e-5


def test_resolve_layers():
    assert resolve_layers([-1, 0, 5], 30) == [0, 5, 29]
    with pytest.raises(LayerIndexError, match="out of range: this model has 30 decoder layers"):
        resolve_layers([30], 30)
    with pytest.raises(LayerIndexError, match="same layer twice"):
        resolve_layers([29, -1], 30)
