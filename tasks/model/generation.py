"""Greedy batched generation, first-reply-token distributions and teacher-forced reply
distributions, with an optional intervention.

Prompts are left padded so every row's last prompt token sits at the same column and the next
token of every row is generated together; position ids follow the attention mask, so padding
shifts nothing. Greedy decoding on fixed batches is deterministic. An intervention is a
callable returning a context manager (e.g. `lambda: add_to_residual(model, 18, v)`): every
forward pass of the batch, prompt and generated tokens alike, runs inside it.

Shapes: B rows, T padded prompt length, V vocabulary.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

import torch

from refusal_atlas.tasks.model.prefill import prefill

Intervention = Callable[[], AbstractContextManager] | None
#: Tokens that end a reply besides the tokenizer's eos, when the vocabulary has them.
_END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<end_of_turn>")


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids [B, T] and attention mask [B, T] with each sequence right-aligned."""
    if any(len(s) == 0 for s in sequences):
        raise ValueError("an empty prompt cannot be generated from; every prompt needs at least one token.")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(sequences), width), dtype=torch.long, device=device)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq):] = torch.tensor(list(seq), device=device)
        mask[row, width - len(seq):] = 1
    return ids, mask


def stop_ids(tokenizer) -> set[int]:
    """Token ids that end a reply: eos and the chat end-of-turn tokens the vocabulary has."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in _END_TOKENS if t in vocab)
    return ids


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def intervened(intervention: Intervention) -> AbstractContextManager:
    """The intervention's context, or a context that does nothing."""
    return intervention() if intervention is not None else contextlib.nullcontext()


@torch.no_grad()
def first_token_log_probs(
    model: torch.nn.Module,
    sequences: Sequence[Sequence[int]],
    pad_id: int,
    batch_size: int = 16,
    intervention: Intervention = None,
) -> torch.Tensor:
    """log P(first reply token) [n, V] (float32) for rendered prompts that end where the reply
    begins (the chat template's generation prompt)."""
    out = []
    for start in range(0, len(sequences), batch_size):
        ids, mask = left_pad(sequences[start: start + batch_size], pad_id, _device(model))
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with intervened(intervention):
            # Only the last position's logits are needed: skip the vocabulary projection elsewhere.
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1).logits[:, -1]
        out.append(torch.log_softmax(logits.float(), dim=-1).cpu())
    return torch.cat(out)


def decoded(tokenizer, replies: Sequence[Sequence[int]]) -> list[str]:
    """Reply token ids (greedy_tokens' output) as text, special tokens dropped, in input order."""
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in replies]


@torch.no_grad()
def greedy_tokens(
    model: torch.nn.Module,
    tokenizer,
    sequences: Sequence[Sequence[int]],
    pad_id: int,
    max_new_tokens: int = 24,
    batch_size: int = 16,
    intervention: Intervention = None,
) -> list[list[int]]:
    """Greedy reply token ids per prompt, in input order, up to (not including) the first stop
    token: a reply shorter than max_new_tokens ended there."""
    stops = torch.tensor(sorted(stop_ids(tokenizer)), dtype=torch.long)
    out: list[list[int]] = []
    for start in range(0, len(sequences), batch_size):
        with intervened(intervention):
            out.extend(_generate_batch(model, sequences[start: start + batch_size], pad_id, max_new_tokens, stops))
    return out


@torch.no_grad()
def forced_log_probs(
    model: torch.nn.Module,
    sequences: Sequence[Sequence[int]],
    replies: Sequence[Sequence[int]],
    pad_id: int,
    n_tokens: int,
    batch_size: int = 16,
    intervention: Intervention = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token log-probabilities at the first n_tokens (K) reply positions, teacher-forced on
    the given replies (greedy_tokens' output, generated with max_new_tokens >= K).

    Position k is the distribution over reply token k given the prompt and reply[:k], so one
    forward pass over prompt + reply[:K-1] gives all K. A reply of r < K tokens ended with a
    stop token at position r, which is still a position the model chose at; positions after it
    are masked. Returns log-probs [n, K, V] (float32, or float64 for a float64 model; on the
    CPU; zeros where masked) and mask [n, K] (bool).
    """
    if len(sequences) != len(replies):
        raise ValueError(f"{len(sequences)} prompts but {len(replies)} replies; give one reply per prompt.")
    if not sequences or n_tokens < 1:
        raise ValueError("teacher forcing needs at least one prompt and n_tokens >= 1.")
    n_valid = [min(n_tokens, len(r) + 1) for r in replies]
    inputs = [[*seq, *reply[: n_tokens - 1]] for seq, reply in zip(sequences, replies)]
    out = []
    for start in range(0, len(inputs), batch_size):
        chunk = inputs[start: start + batch_size]
        keep = min(n_tokens, max(len(s) for s in chunk))
        with intervened(intervention):
            # The common opening runs once; every row keeps at least K tokens of its own, so its
            # reply positions all lie in the kept columns.
            logits = prefill(model, chunk, pad_id, logits_to_keep=keep, min_rest=n_tokens).logits
        # Rows are right-aligned, so row i's reply positions are its last n_valid[i] columns of
        # the kept logits [B, keep, V]; gather them into reply order [B, K, V].
        device = logits.device
        valid = torch.tensor(n_valid[start: start + batch_size], device=device)  # [B]
        k = torch.arange(n_tokens, device=device)  # [K]
        column = (keep - valid[:, None] + k[None, :]).clamp(0, keep - 1)  # [B, K]
        gathered = logits.gather(1, column[..., None].expand(-1, -1, logits.shape[-1]))
        # At least float32, so half-precision models lose nothing more in the softmax.
        log_probs = torch.log_softmax(gathered.to(torch.promote_types(gathered.dtype, torch.float32)), dim=-1)
        out.append(torch.where((k[None, :] < valid[:, None])[..., None], log_probs, 0.0).cpu())
    mask = torch.arange(n_tokens)[None, :] < torch.tensor(n_valid)[:, None]
    return torch.cat(out), mask


def _generate_batch(model, batch, pad_id: int, max_new_tokens: int, stops: torch.Tensor) -> list[list[int]]:
    """New token ids per row, up to (not including) the first stop token."""
    device = _device(model)
    # The prompts' common opening (the chat template's system turn) runs once for the batch.
    pre = prefill(model, batch, pad_id, logits_to_keep=1)
    cache, mask, positions = pre.cache, pre.mask, pre.positions
    stops = stops.to(device)
    done = torch.zeros(len(batch), dtype=torch.bool, device=device)
    generated: list[list[int]] = [[] for _ in batch]
    logits = pre.logits[:, -1]
    for _ in range(max_new_tokens):
        token = logits.argmax(dim=-1)  # [B]
        for row in (~done).nonzero().flatten().tolist():
            if bool(torch.isin(token[row], stops)):
                done[row] = True
            else:
                generated[row].append(int(token[row]))
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        positions = positions[:, -1:] + 1
        out = model(input_ids=token[:, None], attention_mask=mask, position_ids=positions, cache=cache, use_cache=True)
        cache = out.cache
        logits = out.logits[:, -1]
    return generated
