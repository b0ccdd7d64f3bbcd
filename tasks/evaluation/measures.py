"""The measures the evaluation takes of a model, with or without an intervention.

Each function runs a batch of rendered prompts through the model inside an optional
intervention context and returns plain tensors or numbers. The caller holds the model's lock.

- `score`: f (log P(a refusal phrase starts the reply)) and Arditi's refusal log-odds, and
  ||h|| at a layer. Under an intervention the prefix and the phrase both run with it, and the
  captured h is returned unchanged (the replacement is the identity).
- `kl_divergence`: KL(p || q) per row between two next-token log-distributions.
- `forced_base_replies` and `reply_kl`: the side-effect measure. The base model's greedy
  replies are generated once; each intervention is then one teacher-forced pass over prompt +
  reply, and KL(base || intervened) is averaged over the reply's first K positions, per prompt.
- `judged`: greedy replies and both readings of the judge.
- `MeasureRun`: all of these bound to one engine and its settings.

Shapes: n prompts, D hidden size, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from refusal_atlas.tasks.model.chat import RenderedPrompt
from refusal_atlas.tasks.evaluation.settings import EvalSettings
from refusal_atlas.tasks.model.generation import Intervention, decoded, forced_log_probs, greedy_tokens, intervened
from refusal_atlas.tasks.model.hooks import ablate_direction, add_to_residual
from refusal_atlas.tasks.evaluation.induce_batch import InduceBatch
from refusal_atlas.tasks.evaluation.judge import JudgeSummary, summarise
from refusal_atlas.tasks.engine.prefix import PrefixBatch
from refusal_atlas.tasks.engine.targets import RefusalTarget

if TYPE_CHECKING:
    from refusal_atlas.tasks.evaluation.evaluate import Candidate


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
    """KL(p || q) [...] in nats from log-probabilities [..., V] (e.g. [n, V] or [n, K, V])."""
    p = log_p.double()
    return (p.exp() * (p - log_q.double())).sum(-1).clamp(min=0).numpy()


@dataclass(frozen=True)
class ForcedReplies:
    """The unmodified model's greedy replies, teacher-forced once.

    sequences: the rendered prompts' ids; replies: the first K reply ids per prompt (fewer
    where the reply ended); log_probs [n, K, V] and mask [n, K]: the base model's next-token
    distributions at the K reply positions (`forced_log_probs`).
    """

    sequences: list[list[int]]
    replies: list[list[int]]
    log_probs: torch.Tensor
    mask: torch.Tensor

    @property
    def n_tokens(self) -> int:
        return self.mask.shape[1]


def forced_base_replies(
    model: torch.nn.Module,
    tokenizer,
    rendered: Sequence[RenderedPrompt],
    pad_id: int,
    n_tokens: int,
    batch_size: int,
) -> ForcedReplies:
    """Generate the base model's first n_tokens greedy reply tokens and its distributions there.

    The replies come from the unmodified model so every intervention is compared on the same
    text: KL then measures how the intervention changes the model's predictions along the
    base model's own trajectory, not along a trajectory the intervention chose.
    """
    sequences = [list(r.input_ids) for r in rendered]
    replies = greedy_tokens(model, tokenizer, sequences, pad_id, n_tokens, batch_size)
    log_probs, mask = forced_log_probs(model, sequences, replies, pad_id, n_tokens, batch_size)
    return ForcedReplies(sequences, replies, log_probs, mask)


def reply_kl(
    model: torch.nn.Module,
    forced: ForcedReplies,
    pad_id: int,
    batch_size: int,
    intervention: Intervention = None,
) -> np.ndarray:
    """Per prompt [n]: the mean over its valid reply positions of KL(base || intervened)."""
    log_q, mask = forced_log_probs(model, forced.sequences, forced.replies, pad_id, forced.n_tokens,
                                   batch_size, intervention)
    per_position = kl_divergence(forced.log_probs, log_q)  # [n, K]
    # Masked positions hold zeros in both tensors, so their KL is 0; divide by the valid count.
    weights = forced.mask.numpy().astype(np.float64)
    return (per_position * weights).sum(-1) / weights.sum(-1)


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
    tokens = greedy_tokens(model, tokenizer, [r.input_ids for r in rendered], pad_id, max_new_tokens, batch_size,
                           intervention)
    replies = decoded(tokenizer, tokens)
    return Judged(replies, summarise(replies, substring_list))


def mean_and_sem(values: np.ndarray) -> tuple[float, float]:
    """Mean and standard error of the mean (NaN for fewer than two values)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return float("nan"), float("nan")
    sem = float(values.std(ddof=1) / np.sqrt(values.size)) if values.size > 1 else float("nan")
    return float(values.mean()), sem


class MeasureRun:
    """The engine's model, target and settings bound once, so each measure is one call.

    Candidates (tasks.evaluate.Candidate) give a unit vector [D] and a layer; `adder` and
    `ablator` turn one into an intervention for the measures above.
    """

    def __init__(self, engine, settings: EvalSettings):
        self.model = engine.loaded.model
        self.tokenizer = engine.loaded.tokenizer
        self.render, self.target, self.pad_id, self.s = engine.render, engine.target, engine.pad_id, settings
        param = next(self.model.parameters())
        self.device, self.dtype = param.device, param.dtype

    def tensor(self, vector: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(vector, dtype=self.dtype, device=self.device)

    def adder(self, c: Candidate, scale: float):
        vector = self.tensor(c.vector * scale)
        return lambda: add_to_residual(self.model, c.layer, vector)

    def ablator(self, c: Candidate):
        vector = self.tensor(c.vector)
        return lambda: ablate_direction(self.model, vector)

    def score(self, rendered, layer: int, intervention=None):
        return score(self.model, rendered, self.target, self.pad_id, layer, self.s.batch_size, intervention)

    def inducer(self, rendered, layer: int) -> Callable[[Candidate | None, float], Scores]:
        """A function (candidate or None, scale) -> Scores on `rendered` with the candidate's
        vector times scale added at `layer` (None: unmodified). Where tasks.engine.layer_stack
        handles the model, the prompts run through layers 0..L once, here, and each call runs only
        the layers above L (tasks.evaluation.induce_batch); elsewhere each call is a hooked pass."""
        size = self.s.batch_size
        batches = [InduceBatch.of(self.model, rendered[i: i + size], self.target, self.pad_id, layer)
                   for i in range(0, len(rendered), size)]
        if any(b is None for b in batches):
            return lambda c, scale: self.score(rendered, layer, None if c is None else self.adder(c, scale))
        norms = torch.cat([b.h_norm for b in batches]).double().cpu().numpy()

        def induce(c: Candidate | None, scale: float) -> Scores:
            vector = None if c is None else self.tensor(c.vector * scale)
            f, log_odds = (np.concatenate(p) for p in zip(*(b.score(vector) for b in batches)))
            return Scores(f, log_odds, norms)

        return induce

    def forced(self, rendered) -> ForcedReplies:
        return forced_base_replies(self.model, self.tokenizer, rendered, self.pad_id, self.s.kl_tokens,
                                   self.s.batch_size)

    def kl(self, forced: ForcedReplies, intervention=None) -> np.ndarray:
        return reply_kl(self.model, forced, self.pad_id, self.s.batch_size, intervention)

    def judge(self, rendered, intervention=None) -> Judged | None:
        return judged(self.model, self.tokenizer, rendered, self.pad_id, self.s.max_new_tokens,
                      self.s.batch_size, self.s.substring_list, intervention)
