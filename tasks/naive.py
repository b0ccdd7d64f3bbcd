"""The reference f(h): one prompt, one phrase at a time, the full sequence recomputed.

This is the definition in DESIGN.md written as directly as possible, with no cache, padding or
batching. The engine is tested against it and benchmarked against it; it is not used in runs.
"""

from __future__ import annotations

import torch

from tasks.chat import RenderedPrompt
from tasks.hooks import edit_residual
from tasks.targets import RefusalTarget, combine_phrases, score_dtype, token_log_probs


def naive_f(
    model: torch.nn.Module,
    rendered: RenderedPrompt,
    target: RefusalTarget,
    layer: int,
    h: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """f at one prompt with layer `layer`'s output at h's position replaced by h ([D]).

    Returns (f, h) as float32 tensors; f keeps its graph when h requires grad. With h None the
    unmodified h_0 is read and returned.
    """
    device = next(model.parameters()).device
    captured: dict[str, torch.Tensor] = {}
    phrase_lp = []
    for phrase in target.token_ids:
        ids = torch.tensor([list(rendered.input_ids) + list(phrase[:-1])], device=device)
        # Phrase token j is predicted at position len(prompt) - 1 + j.
        targets = torch.full_like(ids, -1)
        start = len(rendered.input_ids) - 1
        targets[0, start: start + len(phrase)] = torch.tensor(phrase, device=device)

        def edit(hidden: torch.Tensor) -> torch.Tensor:
            if h is None:
                captured.setdefault("h", hidden[0, rendered.position].detach().to(score_dtype(hidden.dtype)))
                return hidden
            return hidden.index_put((torch.tensor([0]), torch.tensor([rendered.position])), h.to(hidden.dtype).unsqueeze(0))

        with edit_residual(model, {layer: edit}):
            logits = model(input_ids=ids).logits
        phrase_lp.append(token_log_probs(logits, targets))
    f = combine_phrases(torch.cat(phrase_lp))
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
