"""Induce scores of many candidate directions at one layer, running only the layers above it.

Induce adds v = scale * c to layer L's output at every position. Nothing at layers 0..L depends
on v, so a batch of prompts (each with its refusal phrase tree, as in tasks.engine.prefix) runs
through the embeddings and layers 0..L once, and each candidate then runs only layers
L+1..N-1, the final norm and the head. At SmolLM2's layer 18 of 30 that is 11 layers per
candidate instead of 30. The figures equal the hook path's (tasks.evaluation.measures.score
inside tasks.model.hooks.add_to_residual); tests/test_induce_batch.py checks that in float64.

Architectures that tasks.engine.layer_stack does not handle get None from `InduceBatch.of`,
and the evaluation keeps the hook path for them.

Shapes: B prompts, T prefix width (left padded), N tree nodes, S = T + N, D hidden size,
V vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from refusal_atlas.tasks.engine.layer_stack import LayerStack
from refusal_atlas.tasks.engine.phrase_tree import TreeTensors, build_step_tree
from refusal_atlas.tasks.engine.targets import (
    RefusalTarget, combine_phrases, log_normaliser, refusal_log_odds, score_dtype,
)
from refusal_atlas.tasks.model.chat import RenderedPrompt


class InduceBatch:
    """A batch of prompts held at layer L's output, ready to score any vector added there."""

    def __init__(self, stack: LayerStack, model: torch.nn.Module, rendered: Sequence[RenderedPrompt],
                 target: RefusalTarget, pad_id: int, layer: int):
        first = next(model.parameters())
        self.stack, self.target, self.layer = stack, target, layer
        self.device, self.dtype = first.device, score_dtype(first.dtype)
        n = len(rendered)
        lens = torch.tensor([r.position for r in rendered], device=self.device)
        width = int(lens.max())
        # The prompt up to h's position, left padded as the engine pads it ([B, T]).
        prefix = torch.full((n, width), pad_id, dtype=torch.long, device=self.device)
        valid = torch.zeros((n, width), dtype=torch.long, device=self.device)
        for row, r in enumerate(rendered):
            if r.position:
                prefix[row, width - r.position:] = torch.tensor(r.input_ids[: r.position], device=self.device)
                valid[row, width - r.position:] = 1
        self.tree = TreeTensors([build_step_tree(r.input_ids[r.position:], target.token_ids) for r in rendered],
                                self.device, pad_id)
        self.rows = torch.arange(n, device=self.device)
        tree_ids, tree_mask, tree_positions = self.tree.inputs(self.rows, valid, lens, first.dtype)
        self.ids = torch.cat([prefix, tree_ids], dim=1)  # [B, S]
        self.positions = torch.cat([(valid.cumsum(-1) - 1).clamp(min=0), tree_positions], dim=1)
        self.mask = torch.cat([_prefix_rows(valid, tree_ids.shape[1], first.dtype), tree_mask], dim=2)  # [B, 1, S, S]
        self.width = width
        with torch.no_grad():
            hidden = stack.embed(self.ids, self.positions)
            self.below, _ = stack.run(hidden, torch.zeros_like(self.rows), layer + 1, self.rows, self.positions,
                                      self.mask, None)  # [B, S, D]: layer L's output
        # ||h|| at h's position (the tree's root), the norm the induce scale is relative to.
        self.h_norm = self.below[:, width].to(self.dtype).norm(dim=-1)

    @classmethod
    def of(cls, model: torch.nn.Module, rendered: Sequence[RenderedPrompt], target: RefusalTarget, pad_id: int,
           layer: int) -> InduceBatch | None:
        stack = LayerStack.of(model)
        return None if stack is None else cls(stack, model, rendered, target, pad_id, layer)

    def score(self, vector: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
        """f [B] and the refusal log-odds [B] (float64) with `vector` [D] added to layer L's
        output at every position (None: the unmodified model)."""
        hidden = self.below if vector is None else self.below + vector.to(self.below.dtype)
        starts = torch.full_like(self.rows, self.layer + 1)
        with torch.no_grad():
            top, _ = self.stack.run(hidden, starts, len(self.stack.layers), self.rows, self.positions, self.mask, None)
            logits = self.stack.logits(top[:, self.width:])  # [B, N, V]: the tree's nodes only
            picked = self.tree.picked_logits(logits, self.rows).to(self.dtype)
            f = combine_phrases(self.tree.phrase_log_probs(picked, log_normaliser(logits), self.rows))
            log_odds = refusal_log_odds(logits[self.rows, self.tree.reply_nodes], self.target.first_tokens)
        return f.double().cpu().numpy(), log_odds.double().cpu().numpy()


def _prefix_rows(valid: torch.Tensor, n_nodes: int, dtype: torch.dtype) -> torch.Tensor:
    """The prefix positions' additive attention rows [B, 1, T, T + N]: causal over real tokens,
    blind to the tree; a padding position sees only itself, so no row is empty."""
    width = valid.shape[1]
    causal = torch.ones((width, width), dtype=torch.bool, device=valid.device).tril()
    allowed = causal & valid.bool()[:, None, :]  # [B, T, T]
    allowed |= torch.eye(width, dtype=torch.bool, device=valid.device)
    blind = torch.zeros((valid.shape[0], width, n_nodes), dtype=torch.bool, device=valid.device)
    allowed = torch.cat([allowed, blind], dim=2)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=valid.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min).unsqueeze(1)
