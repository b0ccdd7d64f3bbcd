"""Forward hooks on the residual stream at the output of decoder layers, and directional
ablation, which also edits every block's input and its attention and MLP outputs.

Every hook is registered inside a context manager that creates its handle list first,
registers inside `try` and removes every handle in `finally`, so an exception in the middle of
a forward pass never leaves a hook behind on a shared model.

"The output of decoder layer L" is what transformers' `output_hidden_states` returns at index
L + 1 (index 0 being the embeddings).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn

# Where decoder blocks sit, by model family: llama, qwen2, gemma and mistral keep them at
# `model.layers`; gpt2 at `transformer.h`; gpt-neox at `gpt_neox.layers`.
_LAYER_PATHS = ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers")

#: An edit receives a layer's output hidden states [batch, seq, hidden] and returns the
#: tensor that replaces them (same shape and dtype).
Edit = Callable[[torch.Tensor], torch.Tensor]


class LayerIndexError(IndexError):
    """A requested layer does not exist in this model."""


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    for path in _LAYER_PATHS:
        module: object = model
        for part in path.split("."):
            module = getattr(module, part, None)
            if module is None:
                break
        if isinstance(module, nn.ModuleList):
            return module
    raise TypeError(
        f"{type(model).__name__}: decoder layers not found at any of {_LAYER_PATHS}; "
        "this architecture is not supported yet."
    )


def resolve_layers(layers: Sequence[int], num_layers: int) -> list[int]:
    """Normalise layer indices (negative ones count from the end) and check they exist."""
    resolved = []
    for layer in layers:
        index = layer + num_layers if layer < 0 else layer
        if not 0 <= index < num_layers:
            raise LayerIndexError(
                f"layer {layer} is out of range: this model has {num_layers} decoder layers "
                f"(valid: 0..{num_layers - 1}, or -{num_layers}..-1)."
            )
        resolved.append(index)
    if len(set(resolved)) != len(resolved):
        raise LayerIndexError(f"layers {list(layers)} name the same layer twice")
    return sorted(resolved)


def default_layers(num_layers: int, fractions: Sequence[float]) -> list[int]:
    return sorted({min(num_layers - 1, max(0, round(f * num_layers))) for f in fractions})


@contextmanager
def edit_residual(model: nn.Module, edits: Mapping[int, Edit]) -> Iterator[None]:
    """Apply `edits[L]` to the output of decoder layer L for the duration of the block."""
    layers = decoder_layers(model)
    handles: list[torch.utils.hooks.RemovableHandle] = []
    try:
        for index, edit in edits.items():
            handles.append(layers[index].register_forward_hook(_output_hook(edit)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _output_hook(edit: Edit):
    def hook(_module: nn.Module, _inputs, output):
        # Most decoder blocks in transformers 5 return the hidden states; some (and older
        # versions) return a tuple whose first element they are.
        if isinstance(output, tuple):
            return (edit(output[0]), *output[1:])
        return edit(output)

    return hook


@contextmanager
def capture_residual(
    model: nn.Module, layers: Sequence[int], positions: torch.Tensor
) -> Iterator[dict[int, torch.Tensor]]:
    """Record layer outputs at one position per batch row.

    positions: [batch] token index per row. The yielded dict fills with {layer: [batch, hidden]}
    tensors (detached) once the forward pass has run.
    """
    captured: dict[int, torch.Tensor] = {}

    def recorder(layer: int) -> Edit:
        def edit(hidden: torch.Tensor) -> torch.Tensor:
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            captured[layer] = hidden[rows, positions.to(hidden.device)].detach()
            return hidden

        return edit

    with edit_residual(model, {layer: recorder(layer) for layer in layers}):
        yield captured


def replace_at(hidden: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """hidden with hidden[rows[i], positions[i]] = values[i], out of place so gradients reach values.

    hidden: [batch, seq, hidden]; rows, positions: [n]; values: [n, hidden] (any float dtype).
    """
    return hidden.index_put((rows, positions), values.to(hidden.dtype))


@contextmanager
def add_to_residual(model: nn.Module, layer: int, vector: torch.Tensor) -> Iterator[None]:
    """Add `vector` [hidden] to layer L's output at every position (activation addition)."""

    def edit(hidden: torch.Tensor) -> torch.Tensor:
        return hidden + vector.to(device=hidden.device, dtype=hidden.dtype)

    with edit_residual(model, {layer: edit}):
        yield


# The submodules whose outputs each decoder block adds to its residual stream, by family, as
# (attention, MLP) attribute names. Gemma 2 and 3 normalise each output again before adding it
# (post_attention_layernorm, post_feedforward_layernorm), so there the norms are the writers; in
# llama and qwen2 `post_attention_layernorm` is the MLP's input norm instead, which is why the
# Gemma pair is recognised only when `pre_feedforward_layernorm` also exists.
_WRITER_NAMES = (
    ("post_attention_layernorm", "post_feedforward_layernorm"),
    ("self_attn", "mlp"),
    ("attn", "mlp"),
    ("attention", "mlp"),
)


def residual_writers(model: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """Per decoder block, the (attention, MLP) submodules whose outputs are added to the stream."""
    out = []
    for index, block in enumerate(decoder_layers(model)):
        for attn_name, mlp_name in _WRITER_NAMES:
            if attn_name.startswith("post_") and not hasattr(block, "pre_feedforward_layernorm"):
                continue
            attn, mlp = getattr(block, attn_name, None), getattr(block, mlp_name, None)
            if isinstance(attn, nn.Module) and isinstance(mlp, nn.Module):
                out.append((attn, mlp))
                break
        else:
            raise TypeError(
                f"{type(model).__name__}: decoder block {index} ({type(block).__name__}) has none of the "
                f"attention/MLP submodule pairs {_WRITER_NAMES}, so directional ablation cannot remove the "
                "direction from what the block writes; this architecture is not supported yet."
            )
    return out


def project_out(hidden: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    """hidden - (hidden . c) c for hidden [..., D], in hidden's dtype. unit: one unit c [D], or
    one per batch row [B, 1, D] for hidden [B, T, D] (a zero row leaves its batch row as it is)."""
    c = unit.to(device=hidden.device, dtype=hidden.dtype)
    if c.dim() == 1:
        return hidden - (hidden @ c).unsqueeze(-1) * c
    return hidden - (hidden * c).sum(-1, keepdim=True) * c


def _input_hook(edit: Edit):
    # Decoder blocks take the hidden states as their first positional argument in llama, qwen2
    # and gpt2; some call sites pass them by keyword, so both are handled.
    def hook(_module: nn.Module, args: tuple, kwargs: dict):
        if args:
            return (edit(args[0]), *args[1:]), kwargs
        if "hidden_states" in kwargs:
            return args, {**kwargs, "hidden_states": edit(kwargs["hidden_states"])}
        raise TypeError("a decoder block was called without hidden states; cannot ablate its input.")

    return hook


@contextmanager
def ablate_direction(model: nn.Module, direction: torch.Tensor) -> Iterator[None]:
    """Directional ablation (Arditi et al. 2024) of the `direction` [D] (normalised here).

    x - (x.c)c is applied to the embedding output, to every block's input, to every attention
    and MLP output, and to every block's output. Every term the stream is built from then lacks
    the direction, so no layer reads it and none writes it back: with only the blocks' inputs
    and outputs edited, the attention and MLP outputs still added it inside each block.

    `direction` may also be [B, D], one direction per batch row of every forward pass inside
    the context (the organism's mediation loss ablates a different type's direction in each
    row); a zero row ablates nothing in its batch row.
    """
    if direction.dim() == 2:
        # [B, 1, D]: broadcast over positions; zero rows stay zero rather than becoming NaN.
        unit = (direction / direction.norm(dim=-1, keepdim=True).clamp(min=1e-12))[:, None, :]
    else:
        unit = direction / direction.norm()

    def edit(hidden: torch.Tensor) -> torch.Tensor:
        return project_out(hidden, unit)

    layers = decoder_layers(model)
    # Looked up before any hook exists, so an unsupported architecture fails with nothing to undo.
    writers = residual_writers(model)
    handles: list[torch.utils.hooks.RemovableHandle] = []
    try:
        # In llama and qwen2 the embedding output is block 0's input; in gpt2 the position
        # embeddings are added after it, so block 0's input hook below is what removes them.
        handles.append(model.get_input_embeddings().register_forward_hook(_output_hook(edit)))
        for block, (attn, mlp) in zip(layers, writers):
            handles.append(block.register_forward_pre_hook(_input_hook(edit), with_kwargs=True))
            handles.append(attn.register_forward_hook(_output_hook(edit)))
            handles.append(mlp.register_forward_hook(_output_hook(edit)))
            handles.append(block.register_forward_hook(_output_hook(edit)))
        yield
    finally:
        for handle in handles:
            handle.remove()
