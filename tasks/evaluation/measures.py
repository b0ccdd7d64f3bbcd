"""The measures the evaluation takes of a model, with or without an intervention.

Each function runs a batch of rendered prompts through the model inside an optional
intervention context and returns plain tensors or numbers. The caller holds the model's lock.

- `score`: f (log P(a refusal phrase starts the reply)) and Arditi's refusal log-odds, and
  ||h|| at a layer. Under an intervention the prefix and the phrase both run with it, and the
  captured h is returned unchanged (the replacement is the identity).
- `kl_divergence`: KL(p || q) per row between two next-token log-distributions.
- `judged`: greedy replies and both readings of the judge.

Shapes: n prompts, D hidden size, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from refusal_atlas.tasks.model.chat import RenderedPrompt
from refusal_atlas.tasks.model.generation import Intervention, greedy_generate, intervened
from refusal_atlas.tasks.evaluation.judge import JudgeSummary, summarise
from refusal_atlas.tasks.engine.prefix import PrefixBatch
from refusal_atlas.tasks.engine.targets import RefusalTarget


@dataclass(frozen=True)
class Scores:
    """Per prompt: f [n], log_odds [n], and ||h|| [n] at the scored layer (float64 numpy)."""

    f: np.ndarray
    log_odds: np.ndarray
    h_norm: np.ndarray


def score(
    model: torch.nn.Module,
    rendered: Sequence[RenderedPrompt],
    target: RefusalTarget,
    pad_id: int,
    layer: int,
    batch_size: int,
    intervention: Intervention = None,
) -> Scores:
    """f, log-odds and ||h|| at `layer` for every prompt, in batches, inside the intervention."""
    parts = []
    for start in range(0, len(rendered), batch_size):
        chunk = rendered[start: start + batch_size]
        with intervened(intervention), torch.no_grad():
            batch = PrefixBatch(model, chunk, target, pad_id)
            index = torch.arange(len(chunk), device=batch.device)
            ev = batch.evaluate(index, torch.full_like(index, layer), None, grad=False)
        parts.append((ev.f, ev.log_odds, ev.h.norm(dim=-1)))
    f, log_odds, norms = (torch.cat(p).double().cpu().numpy() for p in zip(*parts))
    return Scores(f, log_odds, norms)


def kl_divergence(log_p: torch.Tensor, log_q: torch.Tensor) -> np.ndarray:
    """KL(p || q) [n] in nats from log-probabilities [n, V]."""
    p = log_p.double()
    return (p.exp() * (p - log_q.double())).sum(-1).clamp(min=0).numpy()


@dataclass(frozen=True)
class Judged:
    replies: list[str]
    summary: JudgeSummary


def judged(
    model: torch.nn.Module,
    tokenizer,
    rendered: Sequence[RenderedPrompt],
    pad_id: int,
    max_new_tokens: int,
    batch_size: int,
    substring_list: str,
    intervention: Intervention = None,
) -> Judged | None:
    """Greedy replies to the full rendered prompts and their judge summary (None without prompts)."""
    if not rendered:
        return None
    replies = greedy_generate(model, tokenizer, [r.input_ids for r in rendered], pad_id, max_new_tokens,
                              batch_size, intervention)
    return Judged(replies, summarise(replies, substring_list))


def mean_and_sem(values: np.ndarray) -> tuple[float, float]:
    """Mean and standard error of the mean (NaN for fewer than two values)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return float("nan"), float("nan")
    sem = float(values.std(ddof=1) / np.sqrt(values.size)) if values.size > 1 else float("nan")
    return float(values.mean()), sem
