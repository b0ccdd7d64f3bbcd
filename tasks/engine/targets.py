"""Refusal targets: the phrase set Y, f = log sum_y P(y | prompt, h), and the log-odds score.

All scores are computed in float32 from the logits, whatever dtype the model runs in, so that
half-precision models do not lose the small probabilities f is made of.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from refusal_atlas.tasks.model.chat import phrase_token_ids


@dataclass(frozen=True)
class RefusalTarget:
    """Refusal phrases and their token ids as the start of the assistant's reply."""

    phrases: tuple[str, ...]
    token_ids: tuple[tuple[int, ...], ...]

    @classmethod
    def build(cls, tokenizer, chat_template: str, phrases: Sequence[str]) -> "RefusalTarget":
        ids = tuple(phrase_token_ids(tokenizer, chat_template, p) for p in phrases)
        return cls(tuple(phrases), ids)

    @property
    def first_tokens(self) -> tuple[int, ...]:
        """Distinct first tokens of the phrases: the refusal tokens of the log-odds score."""
        return tuple(sorted({ids[0] for ids in self.token_ids}))

    @property
    def max_len(self) -> int:
        return max(len(ids) for ids in self.token_ids)


def score_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision and float32 models; float64 stays float64 (for exact tests)."""
    return torch.promote_types(dtype, torch.float32)


def token_log_probs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum over positions of log softmax(logits)[target], skipping targets < 0.

    logits: [rows, seq, vocab] (any float dtype); targets: [rows, seq] token ids, -1 where a
    position predicts nothing. Returns [rows] in float32.
    """
    log_probs = torch.log_softmax(logits.to(score_dtype(logits.dtype)), dim=-1)
    picked = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return torch.where(targets >= 0, picked, torch.zeros_like(picked)).sum(-1)


def log_normaliser(logits: torch.Tensor) -> torch.Tensor:
    """logsumexp over the vocabulary in the score dtype: [..., V] -> [...]; a token's
    log-probability is its logit minus this."""
    return torch.logsumexp(logits.to(score_dtype(logits.dtype)), dim=-1)


def combine_phrases(phrase_log_probs: torch.Tensor) -> torch.Tensor:
    """f = log sum_y P(y): logsumexp over the last axis ([..., n_phrases] -> [...])."""
    return torch.logsumexp(phrase_log_probs, dim=-1)


def refusal_log_odds(next_token_logits: torch.Tensor, refusal_tokens: Sequence[int]) -> torch.Tensor:
    """Arditi et al.'s refusal score at the first reply position: log p - log(1 - p).

    p is the total probability of the refusal tokens (the phrases' first tokens).
    next_token_logits: [batch, vocab] -> [batch] float32.
    """
    log_probs = torch.log_softmax(next_token_logits.to(score_dtype(next_token_logits.dtype)), dim=-1)
    index = torch.tensor(list(refusal_tokens), device=log_probs.device)
    log_p = torch.logsumexp(log_probs[:, index], dim=-1)
    # log(1 - p) computed stably from log p.
    log_not_p = torch.log(-torch.expm1(log_p.clamp(max=-1e-7)))
    return log_p - log_not_p
