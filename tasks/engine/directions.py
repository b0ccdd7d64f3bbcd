"""The maths of refusal directions, independent of how f is evaluated.

Option 1 walks K normalised gradient steps up (the point) and down (the anchor) from h_0:

    point_{i+1}  = point_i  + eta ||h_0|| grad f(point_i)  / ||grad f(point_i)||
    anchor_{i+1} = anchor_i - eta ||h_0|| grad f(anchor_i) / ||grad f(anchor_i)||

and the direction is d = normalise(point_K - anchor_K). Its effect is
f(h_0 + alpha ||h_0|| d) - f(h_0). Option 2 and the difference in means work on stored h_0.

`option1` takes an evaluator (queries, values or None, grad?) -> Evaluation, so the same loop
runs on the cached batch engine, on the naive reference and on synthetic functions in tests.
Shapes: Q queries (a prompt at a layer), D hidden size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from refusal_atlas.tasks.engine.prefix import Evaluation

Evaluator = Callable[[torch.Tensor, "torch.Tensor | None", bool], Evaluation]


@dataclass(frozen=True)
class Option1Result:
    """Per query: h0, point, anchor, direction [Q, D]; f0, f_point, f_anchor, effect, log_odds
    [Q]; steps [Q] (ascent steps the point took); errors: a reason per failed query, else None."""

    h0: torch.Tensor
    point: torch.Tensor
    anchor: torch.Tensor
    direction: torch.Tensor
    f0: torch.Tensor
    f_point: torch.Tensor
    f_anchor: torch.Tensor
    effect: torch.Tensor
    log_odds: torch.Tensor
    steps: torch.Tensor
    errors: list[str | None]


def _unit_steps(grad: torch.Tensor, size: torch.Tensor, index: torch.Tensor, errors: list, where: str) -> torch.Tensor:
    """size * grad / ||grad|| per row ([n, D]); rows whose gradient is zero or not finite get
    a zero step and an error recorded under their query number index[row]."""
    norms = grad.norm(dim=-1, keepdim=True)
    bad = ~torch.isfinite(norms.squeeze(-1)) | (norms.squeeze(-1) == 0)
    for row in bad.nonzero().flatten().tolist():
        kind = "zero" if norms[row].item() == 0 else "not finite"
        errors[int(index[row])] = f"gradient of f is {kind} at {where}"
    return torch.where(bad.unsqueeze(-1), torch.zeros_like(grad), size * grad / norms.clamp_min(1e-30))


def option1(
    evaluate: Evaluator,
    n_queries: int,
    steps: int,
    eta: float,
    alpha: float,
    early_stop: float | None = None,
    gradient: torch.Tensor | None = None,
) -> Option1Result:
    """Run Option 1 for queries 0..Q-1. `gradient` [Q] bool limits the walk to some queries;
    the others get h0, f0 and log-odds only (their other outputs are NaN)."""
    everyone = torch.arange(n_queries)
    # A batch where no query walks (harmless prompts only) needs h_0 and f_0, not a gradient.
    first = evaluate(everyone, None, gradient is None or bool(gradient.any()))
    device = first.f.device
    everyone = everyone.to(device)
    walk = torch.ones(n_queries, dtype=torch.bool, device=device) if gradient is None else gradient.to(device).clone()
    errors: list[str | None] = [None] * n_queries
    h0, f0 = first.h, first.f
    for q in (~torch.isfinite(f0) & walk).nonzero().flatten().tolist():
        errors[q] = "f(h_0) is not finite"
    walk &= torch.isfinite(f0)

    size = eta * h0.norm(dim=-1, keepdim=True)  # [Q, 1]
    # Step 0 is shared: point_0 = anchor_0 = h_0 have the same gradient.
    rising = walk & (f0 < early_stop) if early_stop is not None else walk.clone()
    delta = torch.zeros_like(h0)
    walking = walk.nonzero().flatten()
    if len(walking):
        delta[walking] = _unit_steps(first.grad[walking], size[walking], walking, errors, "h_0")
    walk &= torch.tensor([e is None for e in errors], device=device)
    point = h0 + torch.where(rising.unsqueeze(-1), delta, torch.zeros_like(delta))
    anchor = h0 - delta
    taken = rising.long()
    f_point = f0.clone()

    for i in range(1, steps):
        ups = (rising & walk).nonzero().flatten()
        downs = walk.nonzero().flatten()
        if len(downs) == 0:
            break
        ev = evaluate(torch.cat([ups, downs]), torch.cat([point[ups], anchor[downs]]), True)
        f_up, f_down = ev.f[: len(ups)], ev.f[len(ups):]
        g_up, g_down = ev.grad[: len(ups)], ev.grad[len(ups):]
        f_point[ups] = f_up
        if early_stop is not None:
            stopping = f_up >= early_stop
            rising[ups[stopping]] = False
            ups, g_up = ups[~stopping], g_up[~stopping]
        point[ups] += _unit_steps(g_up, size[ups], ups, errors, f"point step {i}")
        anchor[downs] -= _unit_steps(g_down, size[downs], downs, errors, f"anchor step {i}")
        walk &= torch.tensor([e is None for e in errors], device=device)
        taken[ups] += 1

    direction = torch.full_like(h0, float("nan"))
    f_anchor = torch.full_like(f0, float("nan"))
    effect = torch.full_like(f0, float("nan"))
    done = walk.nonzero().flatten()
    if len(done):
        span = point[done] - anchor[done]
        direction[done] = span / span.norm(dim=-1, keepdim=True).clamp_min(1e-30)
        probe = h0[done] + alpha * h0[done].norm(dim=-1, keepdim=True) * direction[done]
        final = evaluate(torch.cat([done, done, done]), torch.cat([point[done], anchor[done], probe]), False)
        n = len(done)
        f_point[done], f_anchor[done] = final.f[:n], final.f[n: 2 * n]
        effect[done] = final.f[2 * n:] - f0[done]
    not_walked = ~walk
    for tensor in (point, anchor):
        tensor[not_walked] = float("nan")
    f_point[not_walked] = float("nan")
    return Option1Result(h0, point, anchor, direction, f0, f_point, f_anchor, effect, first.log_odds, taken, errors)


def best_layer(effect: np.ndarray, layers: list[int]) -> int:
    """The layer whose direction moves f the most ([L] effects); -1 when none is finite."""
    if not np.isfinite(effect).any():
        return -1
    return int(layers[int(np.nanargmax(effect))])
