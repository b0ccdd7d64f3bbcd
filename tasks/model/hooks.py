"""Forward hooks on the residual stream at the output of decoder layers.

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


@contextmanager
def ablate_direction(model: nn.Module, direction: torch.Tensor) -> Iterator[None]:
    """Project the unit `direction` [hidden] out of every decoder layer's output: x - (x.c)c."""
    unit = direction / direction.norm()

    def edit(hidden: torch.Tensor) -> torch.Tensor:
        c = unit.to(device=hidden.device, dtype=hidden.dtype)
        return hidden - (hidden @ c).unsqueeze(-1) * c

    # The embedding output is the residual stream's first state, so it is ablated too: every
    # decoder layer then reads a stream without the direction, as in Arditi et al. 2024.
    handles: list[torch.utils.hooks.RemovableHandle] = []
    try:
        handles.append(model.get_input_embeddings().register_forward_hook(_output_hook(edit)))
        with edit_residual(model, {i: edit for i in range(len(decoder_layers(model)))}):
            yield
    finally:
        for handle in handles:
            handle.remove()
