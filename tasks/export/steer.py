"""Steering a loaded model with exported directions: add them, or ablate their span.

add: alpha * mean_h0_norm * d is added to the output of the direction's decoder block at every
position, exactly what a llama.cpp control vector does (block N's output is Hugging Face
`hidden_states[N + 1]`); alpha is in the atlas's units, so alpha equal to the direction's
recorded alpha is llama.cpp strength 1.0.

ablate: the span of the directions is projected out of the output of every module that writes
to the residual stream (embeddings, attention and MLP output projections) at every position,
which is what abliterated weights compute (abliterate.py); alpha plays no part.

Shapes: B rows, T tokens, D hidden size, k directions.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from refusal_atlas.tasks.export.abliterate import orthonormal_basis, residual_writers
from refusal_atlas.tasks.export.safetensors_vectors import LoadedDirection
from refusal_atlas.tasks.model.hooks import edit_residual


@contextmanager
def add_directions(model: nn.Module, directions: Sequence[LoadedDirection], alpha: float | None) -> Iterator[None]:
    """Add alpha * scale/recorded-alpha * d per direction at its layer (alpha None: strength 1.0)."""
    sums: dict[int, torch.Tensor] = defaultdict(lambda: 0)
    for direction in directions:
        strength = 1.0 if alpha is None else alpha / direction.alpha
        sums[direction.layer] = sums[direction.layer] + strength * direction.scale * torch.as_tensor(
            direction.vector, dtype=torch.float64)

    def adder(vector: torch.Tensor):
        def edit(hidden: torch.Tensor) -> torch.Tensor:  # [B, T, D]
            return hidden + vector.to(device=hidden.device, dtype=hidden.dtype)

        return edit

    with edit_residual(model, {layer: adder(vector) for layer, vector in sums.items()}):
        yield


@contextmanager
def ablate_span(model: nn.Module, vectors) -> Iterator[None]:
    """Project the span of vectors [k, D] out of every residual-stream writer's output."""
    q = orthonormal_basis(vectors)  # [k, D] float64

    def hook(_module, _inputs, output: torch.Tensor) -> torch.Tensor:  # output [B, T, D]
        basis = q.to(device=output.device, dtype=output.dtype)
        return output - (output @ basis.T) @ basis

    handles: list[torch.utils.hooks.RemovableHandle] = []
    try:
        for writer in residual_writers(model):
            handles.append(writer.module.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


def intervention(model: nn.Module, directions: Sequence[LoadedDirection], alpha: float | None, mode: str):
    """A zero-argument callable giving the context manager of the intervention (generation.py)."""
    if mode == "add":
        return lambda: add_directions(model, directions, alpha)
    if mode == "ablate":
        vectors = torch.stack([torch.as_tensor(d.vector, dtype=torch.float64) for d in directions])
        return lambda: ablate_span(model, vectors)
    raise ValueError(f"mode must be 'add' or 'ablate', not {mode!r}")


@dataclass(frozen=True)
class SteeredReply:
    prompt: str
    base: str
    steered: str
    base_substring: bool
    base_kind: str
    steered_substring: bool
    steered_kind: str


def steer_prompts(loaded, directions: Sequence[LoadedDirection], prompts: Sequence[str], alpha: float | None,
                  mode: str, max_new_tokens: int = 32) -> list[SteeredReply]:
    """Greedy replies to each prompt with and without the intervention, with both judges' verdicts."""
    from refusal_atlas.tasks.evaluation.judge import judge
    from refusal_atlas.tasks.model.chat import pad_id, render_prompt
    from refusal_atlas.tasks.model.generation import decoded, greedy_tokens

    tokenizer = loaded.tokenizer
    pad = pad_id(tokenizer)
    sequences = [render_prompt(tokenizer, loaded.chat_template, p).input_ids for p in prompts]
    with loaded.lock:
        base = decoded(tokenizer, greedy_tokens(loaded.model, tokenizer, sequences, pad, max_new_tokens))
        steered = decoded(tokenizer, greedy_tokens(loaded.model, tokenizer, sequences, pad, max_new_tokens,
                                                   intervention=intervention(loaded.model, directions, alpha, mode)))
    out = []
    for prompt, before, after in zip(prompts, base, steered):
        b, a = judge(before), judge(after)
        out.append(SteeredReply(prompt, before, after, b.substring, b.kind, a.substring, a.kind))
    return out


def side_by_side(replies: Sequence[SteeredReply], what: str) -> str:
    """The replies as text a person reads: each prompt, then both replies with their verdicts."""
    def indented(reply: str) -> str:
        # Continuation lines of a reply are indented too, so every reply stays under its header.
        return "    " + reply.replace("\n", "\n    ")

    lines = [what]
    for r in replies:
        lines += [
            "",
            f"prompt: {r.prompt}",
            f"  base    [substring {'refusal' if r.base_substring else 'no refusal'}; strict {r.base_kind}]",
            indented(r.base),
            f"  steered [substring {'refusal' if r.steered_substring else 'no refusal'}; strict {r.steered_kind}]",
            indented(r.steered),
        ]
    return "\n".join(lines)
