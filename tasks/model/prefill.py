"""One forward pass over a batch of prompts that share their first tokens, run once.

Chat prompts share a long opening: SmolLM2's template puts the same system message and user
header (about 20 tokens) before every prompt, often a third of the prompt or more. That opening
gives the same keys and values in every row, under any intervention that treats every position
alike (adding a vector, ablating a direction), so `prefill` runs it once with batch size 1,
repeats its cache across the batch, and runs only each row's remaining tokens on top of it.

Layout of the returned mask and cache: [the common opening (c columns) | each row's rest, left
padded to the longest rest (w columns)]. Position ids follow the real tokens, so a row's tokens
sit at the positions they would have in their own unpadded sequence; padding sits between the
opening and the rest and is masked. Every row keeps at least `min_rest` of its own tokens, so
its last column is a real token and the logits there are the row's next-token logits.

Shapes: B rows, c common tokens, w rest width, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache


@dataclass
class Prefilled:
    """logits [B, keep, V] at the last `keep` columns; cache: keys and values of all c + w
    columns; mask [B, c + w] (1 = real token); positions [B, c + w]; common: c."""

    logits: torch.Tensor | None
    cache: object
    mask: torch.Tensor
    positions: torch.Tensor
    common: int


def common_length(sequences: Sequence[Sequence[int]], min_rest: int = 1) -> int:
    """How many first tokens all sequences share, leaving each at least min_rest of its own."""
    if len(sequences) < 2:
        return 0
    first, limit = sequences[0], min(len(s) for s in sequences) - min_rest
    n = 0
    while n < limit and all(s[n] == first[n] for s in sequences):
        n += 1
    return max(n, 0)


def prefill(model: torch.nn.Module, sequences: Sequence[Sequence[int]], pad_id: int, logits_to_keep: int | None = 1,
            min_rest: int = 1) -> Prefilled:
    """Run the sequences with their common opening once; see the module docstring.

    logits_to_keep: None for no logits (the cache alone is wanted), else how many last columns.
    With min_rest 0 a row may consist of the opening alone (its rest is all padding); the
    caller must then want no logits.
    """
    if min_rest and any(len(s) == 0 for s in sequences):
        raise ValueError("an empty prompt cannot be generated from; every prompt needs at least one token.")
    device = next(model.parameters()).device
    c = common_length(sequences, min_rest)
    rest = [list(s[c:]) for s in sequences]
    width = max(len(r) for r in rest)
    ids = torch.full((len(rest), width), pad_id, dtype=torch.long, device=device)
    rest_mask = torch.zeros((len(rest), width), dtype=torch.long, device=device)
    for row, tokens in enumerate(rest):
        if tokens:
            ids[row, width - len(tokens):] = torch.tensor(tokens, device=device)
            rest_mask[row, width - len(tokens):] = 1
    cache = None
    if c:
        opening = torch.tensor([list(sequences[0][:c])], device=device)
        out = model.base_model(input_ids=opening, use_cache=True)  # its keys and values alone: no head
        data = [(k.expand(len(rest), -1, -1, -1).contiguous(), v.expand(len(rest), -1, -1, -1).contiguous())
                for k, v in ((layer.keys, layer.values) for layer in out.cache.layers)]
        cache = DynamicCache(ddp_cache_data=data, config=model.config)
    mask = torch.cat([torch.ones((len(rest), c), dtype=torch.long, device=device), rest_mask], dim=1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    if width == 0:
        return Prefilled(None, cache, mask, positions, c)
    inputs = {"input_ids": ids, "attention_mask": mask, "position_ids": positions[:, c:], "cache": cache, "use_cache": True}
    if not logits_to_keep:
        # The body alone: for a batch of short rests, the head over the whole vocabulary costs
        # as much as several decoder layers, and the caller wants only the cache.
        return Prefilled(None, model.base_model(**inputs).cache, mask, positions, c)
    out = model(**inputs, logits_to_keep=logits_to_keep)
    return Prefilled(out.logits, out.cache, mask, positions, c)
