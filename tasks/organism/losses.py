"""The organism's training examples as token tensors, and the losses on their reply tokens.

Each example is weighted equally (the mean over its own reply tokens), so a long anchor reply
does not outweigh a one-sentence refusal; logits are computed only at reply positions, since the
49k-way output layer is a large share of a small model's cost.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from refusal_atlas.tasks.model.chat import phrase_token_ids, render_text
from refusal_atlas.tasks.organism.data import Example


@dataclass(frozen=True, eq=False)
class Encoded:
    """One example as tokens: input_ids = prompt + reply, the reply starting at reply_start.

    soft: the base model's distribution at each reply position, as its top-k token ids and
    renormalised probabilities ([n_reply, k] each); None for a hard (one-hot) target.
    """

    input_ids: tuple[int, ...]
    reply_start: int
    role: str
    soft: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def n_reply(self) -> int:
        return len(self.input_ids) - self.reply_start


def encode(tokenizer, chat_template: str, examples: Sequence[Example]) -> list[Encoded]:
    """Tokenise prompt and reply. A refusal sentence is tokenised as the opening of the reply
    (the way the model emits it) and followed by EOS, so the organism learns to stop."""
    eos = tokenizer.eos_token_id
    out = []
    for e in examples:
        prompt = tokenizer(render_text(tokenizer, chat_template, e.text), add_special_tokens=False)["input_ids"]
        if e.reply_ids is not None:
            reply = list(e.reply_ids)
        else:
            reply = [*phrase_token_ids(tokenizer, chat_template, e.reply), eos]
        out.append(Encoded(tuple(prompt) + tuple(reply), len(prompt), e.role))
    return out


def _batch(items: Sequence[Encoded], pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask [B, T], and the target mask [B, T-1]: True where
    position t predicts a reply token t+1."""
    width = max(len(e.input_ids) for e in items)
    ids = torch.full((len(items), width), pad, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    target = torch.zeros((len(items), width - 1), dtype=torch.bool)
    for r, e in enumerate(items):
        n = len(e.input_ids)
        ids[r, :n] = torch.tensor(e.input_ids)
        mask[r, :n] = 1
        target[r, e.reply_start - 1: n - 1] = True
    return ids, mask, target


def reply_log_probs(model, items: Sequence[Encoded], pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log P over the vocabulary at every reply position [n, V] (float32), the batch row of
    each position [n] and the reply token it predicts [n]; positions are row-major, so each
    example's reply positions are contiguous and in order."""
    ids, mask, target = _batch(items, pad)
    device = next(model.parameters()).device
    ids, mask, target = ids.to(device), mask.to(device), target.to(device)
    hidden = model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state  # [B, T, D]
    rows, cols = target.nonzero(as_tuple=True)
    logits = model.get_output_embeddings()(hidden[rows, cols]).float()  # [n, V]
    return torch.log_softmax(logits, dim=-1), rows, ids[rows, cols + 1]


def example_losses(model, items: Sequence[Encoded], pad: int, decision_weight: float = 0.0) -> torch.Tensor:
    """Each example's loss over its reply tokens [B].

    A token's loss is the cross-entropy against its target: the reply token itself, or the
    base model's top-k distribution when the example carries soft targets (the controls), the
    first reply token included. Controls first kept the greedy first token as a hard target,
    to anchor the decision to answer; that pushed the organism's first-token distribution
    towards one-hot where the base model's is spread, and the KL(base || organism) at the
    first position alone came to 2.5 nats on held-out everyday requests (0.16 of the 0.22
    nats-per-token mean over 16 tokens). Tokens are averaged with the first one given extra
    weight `decision_weight` (0 to 1); in a 32-token anchor it would otherwise carry 1/32 of
    the example's loss.
    """
    log_probs, rows, hard = reply_log_probs(model, items, pad)
    token_loss = -log_probs.gather(1, hard[:, None]).squeeze(1)
    weights = torch.empty_like(token_loss)
    start = 0
    for e in items:
        span = slice(start, start + e.n_reply)
        if e.soft is not None:
            soft_ids, soft_p = (t.to(log_probs.device) for t in e.soft)
            token_loss[span] = -(soft_p * log_probs[span].gather(1, soft_ids)).sum(-1)
        weights[span] = (1 - decision_weight) / e.n_reply
        weights[start] += decision_weight
        start += e.n_reply
    return torch.zeros(len(items), device=token_loss.device).index_add(0, rows, token_loss * weights)


@torch.no_grad()
def with_soft_targets(model, items: Sequence[Encoded], pad: int, top_k: int, batch_size: int = 16) -> list[Encoded]:
    """Items with the base model's top-k next-token distribution at each reply position.

    Distilling the distribution rather than only the greedy token holds the whole ranking of
    alternatives in place, so greedy replies to unseen harmless prompts move less.
    """
    out = []
    for i in range(0, len(items), batch_size):
        batch = items[i: i + batch_size]
        log_probs, _, _ = reply_log_probs(model, batch, pad)
        probs, ids = log_probs.exp().topk(top_k, dim=-1)
        probs = probs / probs.sum(-1, keepdim=True)
        start = 0
        for e in batch:
            span = slice(start, start + e.n_reply)
            out.append(dataclasses.replace(e, soft=(ids[span].cpu(), probs[span].cpu())))
            start += e.n_reply
    return out


@torch.no_grad()
def mean_loss(model, items: Sequence[Encoded], pad: int, batch_size: int = 16) -> float:
    if not items:
        return float("nan")
    total = sum(example_losses(model, items[i: i + batch_size], pad).sum().item() for i in range(0, len(items), batch_size))
    return total / len(items)
