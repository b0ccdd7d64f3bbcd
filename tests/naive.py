"""The reference f(h): one prompt at a time, the full sequence recomputed at every step.

This is the definition in DESIGN.md written as directly as possible, with no cache, no tree
and no batching across prompts. The engine is tested against it and benchmarked against it; it is not used in runs.
"""

from __future__ import annotations

import torch

from refusal_atlas.tasks.model.chat import RenderedPrompt
from refusal_atlas.tasks.model.hooks import edit_residual
from refusal_atlas.tasks.engine.targets import RefusalTarget, combine_phrases, score_dtype, token_log_probs


def naive_f(
    model: torch.nn.Module,
    rendered: RenderedPrompt,
    target: RefusalTarget,
    layer: int,
    h: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """f at one prompt with layer `layer`'s output at h's position replaced by h ([D]).

    One full forward pass whose rows are the prompt followed by each phrase (right padded).
    Returns (f, h); f keeps its graph when h requires grad. With h None the unmodified h_0 is
    read and returned.
    """
    device = next(model.parameters()).device
    prompt = list(rendered.input_ids)
    width = len(prompt) + target.max_len - 1
    ids = torch.zeros((len(target.token_ids), width), dtype=torch.long, device=device)
    targets = torch.full_like(ids, -1)
    for row, phrase in enumerate(target.token_ids):
        sequence = prompt + list(phrase[:-1])
        ids[row, : len(sequence)] = torch.tensor(sequence, device=device)
        # Phrase token j is predicted at position len(prompt) - 1 + j.
        targets[row, len(prompt) - 1: len(prompt) - 1 + len(phrase)] = torch.tensor(phrase, device=device)
    rows = torch.arange(len(target.token_ids), device=device)
    where = torch.full_like(rows, rendered.position)
    captured: dict[str, torch.Tensor] = {}

    def edit(hidden: torch.Tensor) -> torch.Tensor:
        if h is None:
            captured["h"] = hidden[0, rendered.position].detach().to(score_dtype(hidden.dtype))
            return hidden
        return hidden.index_put((rows, where), h.to(hidden.dtype).expand(len(rows), -1))

    # Right padding needs no mask: causal attention keeps real tokens from seeing it.
    with edit_residual(model, {layer: edit}):
        logits = model(input_ids=ids).logits
    f = combine_phrases(token_log_probs(logits, targets))
    return f, (h if h is not None else captured["h"])


def naive_f_and_grad(model, rendered, target, layer, h: torch.Tensor) -> tuple[float, torch.Tensor]:
    leaf = h.detach().requires_grad_(True)
    with torch.enable_grad():
        f, _ = naive_f(model, rendered, target, layer, leaf)
        (grad,) = torch.autograd.grad(f, leaf)
    return float(f.detach()), grad


def naive_option1(model, rendered, target, layer, steps: int, eta: float) -> dict[str, torch.Tensor]:
    """Option 1 for one prompt and layer, one full forward and backward per step and side."""
    _, h0 = naive_f(model, rendered, target, layer)
    step = eta * h0.norm()
    point, anchor = h0.clone(), h0.clone()
    for _ in range(steps):
        _, g_point = naive_f_and_grad(model, rendered, target, layer, point)
        _, g_anchor = naive_f_and_grad(model, rendered, target, layer, anchor)
        point = point + step * g_point / g_point.norm()
        anchor = anchor - step * g_anchor / g_anchor.norm()
    direction = (point - anchor) / (point - anchor).norm()
    return {"h0": h0, "point": point, "anchor": anchor, "direction": direction}
