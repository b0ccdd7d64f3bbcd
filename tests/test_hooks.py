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
    residual_writers,
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
    assert all(not layer._forward_hooks and not layer._forward_pre_hooks for layer in layers)
    assert all(not m._forward_hooks for pair in residual_writers(model) for m in pair)
    assert not model.get_input_embeddings()._forward_hooks
    with pytest.raises(RuntimeError, match="boom"):
        with ablate_direction(model, torch.ones(32)):
            raise RuntimeError("boom")
    assert all(not layer._forward_hooks and not layer._forward_pre_hooks for layer in layers)
    assert all(not m._forward_hooks for pair in residual_writers(model) for m in pair)


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


def _along(hidden: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    """|h . c| / ||h|| [...] for hidden [..., D]: the share of each state along the unit c."""
    return (hidden @ unit).abs() / hidden.norm(dim=-1).clamp(min=1e-12)


# The norm that reads the stream between a block's attention and its MLP, by family: its input
# is the residual stream in the middle of the block, which hidden_states never shows.
_MID_NORM = {"llama": "post_attention_layernorm", "qwen2": "post_attention_layernorm", "gpt2": "ln_2",
             "gemma2": "pre_feedforward_layernorm"}


# Gemma 2 normalises each attention and MLP output again before adding it, so its writers are
# those norms; it is here to guard that case.
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2", "gemma2"])
def test_ablation_leaves_no_component_in_the_residual_stream(arch):
    model = tiny_model(arch, layers=4)
    # Norm weights start uniform (ones, or zeros in Gemma's 1 + w), and a uniform norm only
    # rescales; random weights make a norm after an ablated output bring the direction back.
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 1 and ("norm" in name or ".ln" in name):
                param.add_(0.5 * torch.randn(param.shape, generator=generator))
    ids, mask, positions = _batch(tiny_tokenizer(), PROMPTS[:3])
    unit = torch.nn.functional.normalize(torch.randn(32, generator=torch.Generator().manual_seed(1)), dim=0)
    middles: list[torch.Tensor] = []

    def record(_module, args):
        middles.append(args[0])

    def run():
        """hidden_states (every block's input [B, T, D]), the last block's output and the
        stream between each block's attention and MLP."""
        middles.clear()
        norms = [getattr(block, _MID_NORM[arch]) for block in decoder_layers(model)]
        handles = [norm.register_forward_pre_hook(record) for norm in norms]
        try:
            with capture_residual(model, [3], torch.full((ids.shape[0],), ids.shape[1] - 1)) as last:
                out = model(input_ids=ids, attention_mask=mask, position_ids=positions, output_hidden_states=True)
        finally:
            for handle in handles:
                handle.remove()
        # hidden_states[-1] has the final norm applied, which reintroduces the direction, so the
        # stream's last state is read as the last block's output instead.
        return [*out.hidden_states[:-1], last[3], *middles]

    # Without ablation the direction is there to remove (otherwise the test shows nothing).
    assert max(float(_along(h, unit).max()) for h in run()) > 1e-2
    with ablate_direction(model, unit * 3.0):
        states = run()
    assert len(states) == 4 + 1 + 4
    for hidden in states:
        assert float(_along(hidden, unit).max()) < 1e-4


def test_ablation_names_an_architecture_it_cannot_handle():
    model = tiny_model("llama", layers=2)
    for block in decoder_layers(model):
        block.mlp_renamed = block.mlp
        del block.mlp
    with pytest.raises(TypeError, match="attention/MLP submodule pairs"):
        with ablate_direction(model, torch.ones(32)):
            pass
    assert all(not layer._forward_pre_hooks for layer in decoder_layers(model))
