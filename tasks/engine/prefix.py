"""f(h) and its gradient for many (prompt, layer, h) queries, on a reused prefix KV cache.

Replacing layer L's output at the prompt's position p changes nothing before p, at any layer.
So the tokens before p (the prefix) run through the model once per batch, and every later
evaluation (each gradient step, point and anchor, every layer) runs only the tokens from p on
plus the refusal phrase, attending to that cached prefix.

Nor does it change anything at layers 0..L for the tree: its tokens there depend only on the
prefix and the root's lower states. So, for the architectures `layer_stack` handles, the trees
run through layers 0..L once per batch (no gradient), and every evaluation runs only layers
L+1..N-1, the final norm and the head on the tree's states at L's output, with the root's
replaced by h. Other architectures (and `skip_lower_layers=False`) run the whole stack with a
hook that replaces L's output.

The step's tokens form a tree (see `phrase_tree`): the phrases share their common first tokens,
and one batch row holds a query's whole tree under a 4D attention mask.

Shapes: B prompts, Q queries (each a prompt, a layer and a value of h) = rows, P phrases,
T prefix length (left padded), N tree nodes (padded), D hidden size, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from refusal_atlas.tasks.model.chat import RenderedPrompt
from refusal_atlas.tasks.model.hooks import edit_residual, replace_at
from refusal_atlas.tasks.model.prefill import prefill
from refusal_atlas.tasks.engine.head import log_normaliser_from_states
from refusal_atlas.tasks.engine.layer_stack import LayerStack
from refusal_atlas.tasks.engine.phrase_tree import TreeTensors, build_step_tree
from refusal_atlas.tasks.engine.targets import (
    RefusalTarget, combine_phrases, log_normaliser, refusal_log_odds, score_dtype,
)


@dataclass(frozen=True)
class Evaluation:
    """What one evaluation of Q queries returns (float32, or float64 for float64 models).

    f: [Q]. grad: [Q, D] or None. h: [Q, D], the values f was evaluated at (the captured h_0 when
    none were given). log_odds: [Q], the unmodified model's refusal log-odds at the first reply
    position; None when values were given, since nothing reads the log-odds of a moved h and
    forming them takes the reply's full logits at every step.
    """

    f: torch.Tensor
    grad: torch.Tensor | None
    h: torch.Tensor
    log_odds: torch.Tensor | None


class PrefixBatch:
    """A batch of rendered prompts whose prefixes have run through the model once."""

    def __init__(
        self,
        model: torch.nn.Module,
        rendered: Sequence[RenderedPrompt],
        target: RefusalTarget,
        pad_id: int,
        skip_lower_layers: bool = True,
    ):
        self.model = model
        self.target = target
        self.pad_id = pad_id
        first = next(model.parameters())
        self.device = first.device
        self.dtype = score_dtype(first.dtype)
        self.model_dtype = first.dtype
        self.prefix_lens = torch.tensor([r.position for r in rendered], device=self.device)
        self._kv, self._prefix_mask = self._run_prefix(rendered)
        trees = [build_step_tree(r.input_ids[r.position:], target.token_ids) for r in rendered]
        self._tree = TreeTensors(trees, self.device, pad_id)
        self.forward_passes = 1
        # With a stack, steps run only the layers above L (None: full passes with a hook).
        self._stack = LayerStack.of(model) if skip_lower_layers else None
        self._below: dict[int, torch.Tensor] = {}  # layer L -> the trees' states at L's output [B, N, D]

    @property
    def batch_size(self) -> int:
        return len(self.prefix_lens)

    def _run_prefix(self, rendered: Sequence[RenderedPrompt]):
        """Left-pad the prefixes, run them once and keep each layer's keys and values."""
        if int(self.prefix_lens.max()) == 0:
            return None, torch.zeros((len(rendered), 0), dtype=torch.long, device=self.device)
        # The prompts' common opening (the chat template's system turn) runs once and its keys and
        # values are shared; each row's remaining prefix, left padded, runs on top of it.
        # Position ids follow the real tokens, so the padding shifts nothing.
        with torch.no_grad():
            pre = prefill(self.model, [r.input_ids[: r.position] for r in rendered], self.pad_id,
                          logits_to_keep=None, min_rest=0)
        kv = [(layer.keys, layer.values) for layer in pre.cache.layers]
        return kv, pre.mask

    def evaluate(
        self,
        prompts: torch.Tensor,
        layers: torch.Tensor,
        values: torch.Tensor | None = None,
        grad: bool = True,
    ) -> Evaluation:
        """f at Q queries: prompts[q] (batch index) with layer layers[q]'s output at h's position
        replaced by values[q] ([Q, D]); with values None the unmodified h is captured (h_0)."""
        if values is not None:
            values = values.detach().to(self.dtype).requires_grad_(grad)
        with torch.set_grad_enabled(grad):
            run = self._upper_pass if self._stack is not None else self._full_pass
            log_norm, reply, picked, h, leaves, regroup = run(prompts, layers, values, grad)
            f = combine_phrases(self._tree.phrase_log_probs(picked.to(self.dtype), log_norm, prompts))  # [Q]
        self.forward_passes += 1
        log_odds = None if reply is None else refusal_log_odds(reply.detach(), self.target.first_tokens)
        gradient = regroup(torch.autograd.grad(f.sum(), leaves)) if grad else None
        return Evaluation(f.detach(), None if gradient is None else gradient.detach(), h.detach(), log_odds)

    def _upper_pass(self, prompts, layers, values, grad):
        """The head's outputs from layers L+1..N-1 only, on the tree's cached states at L's output.

        Returns (the log-normalisers [Q, N], the reply's first-position logits [Q, V] or None when
        values are given, the predicted tokens' logits [Q, P, J], h [Q, D], the leaves to
        differentiate, a function from their gradients to [Q, D]). With values None, h is the
        cached h_0 itself, made a leaf. The predicted logits are dot products with the head's
        rows, and the normalisers are streamed over the vocabulary (`head`), so no [Q, N, V]
        tensor is formed.
        """
        start = self._states_below(prompts, layers)  # [Q, N, D], each query's layer L output
        unmodified = values is None
        if unmodified:
            values = start[:, 0].to(self.dtype).requires_grad_(grad)
        rows = torch.arange(len(prompts), device=self.device)
        hidden = replace_at(start, rows, torch.zeros_like(rows), values)
        # The stack wants rows sorted by their first layer; it runs each from L + 1 to the top.
        order = torch.argsort(layers, stable=True)
        _, mask, positions = self._tree.inputs(prompts[order], self._prefix_mask, self.prefix_lens, self.model_dtype)
        top, _ = self._stack.run(
            hidden[order], layers[order] + 1, len(self._stack.layers), prompts[order], positions, mask, self._kv
        )
        normed = self._stack.norm(top)[torch.argsort(order)]  # [Q, N, D]
        picked = self._tree.picked_from_hidden(normed, self._stack.lm_head, prompts)
        n_nodes = normed.shape[1]
        # The reply's full logits (for the log-odds) are kept only for the unmodified model.
        reply_rows = rows * n_nodes + self._tree.reply_nodes[prompts] if unmodified else rows[:0]  # in [Q * N]
        log_norm, reply = log_normaliser_from_states(normed.flatten(0, 1), self._stack.lm_head, reply_rows)
        return (log_norm.view(len(prompts), n_nodes), reply if unmodified else None, picked, values, [values],
                lambda grads: grads[0])

    def _states_below(self, prompts: torch.Tensor, layers: torch.Tensor) -> torch.Tensor:
        """Each query's tree states at the output of its layer L ([Q, N, D], no gradient).

        They depend only on the prompt, so the embeddings and layers 0..L run once per batch
        for all B prompts, the first time a layer is asked for.
        """
        missing = sorted({int(layer) for layer in layers.unique()} - set(self._below))
        if missing:
            everyone = torch.arange(self.batch_size, device=self.device)
            ids, mask, positions = self._tree.inputs(everyone, self._prefix_mask, self.prefix_lens, self.model_dtype)
            with torch.no_grad():
                hidden = self._stack.embed(ids, positions)
                starts = torch.zeros_like(everyone)
                _, captured = self._stack.run(
                    hidden, starts, missing[-1] + 1, everyone, positions, mask, self._kv, capture=missing
                )
            self._below.update(captured)
            self.forward_passes += 1
        shape = (len(prompts), *self._below[int(layers[0])].shape[1:])
        out = torch.empty(shape, dtype=self.model_dtype, device=self.device)
        for layer in layers.unique().tolist():
            where = (layers == layer).nonzero().squeeze(-1)
            out[where] = self._below[layer].index_select(0, prompts[where])
        return out

    def _full_pass(self, prompts, layers, values, grad):
        """What `_upper_pass` returns, from a full forward pass of the tree with layer L's output
        at the root replaced by a hook (for architectures `LayerStack` does not handle)."""
        leaves: dict[int, torch.Tensor] = {}
        present = [int(layer) for layer in layers.unique()]

        def editor(layer: int):
            rows = (layers == layer).nonzero().squeeze(-1)
            root = torch.zeros_like(rows)

            def edit(hidden: torch.Tensor) -> torch.Tensor:
                if values is None:
                    leaf = hidden[rows, 0].detach().to(self.dtype).requires_grad_(grad)
                    leaves[layer] = leaf
                    return replace_at(hidden, rows, root, leaf)
                return replace_at(hidden, rows, root, values[rows])

            return edit

        ids, mask, positions = self._tree.inputs(prompts, self._prefix_mask, self.prefix_lens, self.model_dtype)
        with edit_residual(self.model, {layer: editor(layer) for layer in present}):
            logits = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                cache=self._expanded_cache(prompts),
                use_cache=True,
            ).logits
        picked = self._tree.picked_logits(logits, prompts)  # [Q, P, J]
        log_norm = log_normaliser(logits)  # [Q, N]
        if values is not None:
            return log_norm, None, picked, values, [values], lambda grads: grads[0]
        reply = logits[torch.arange(len(prompts), device=self.device), self._tree.reply_nodes[prompts]]  # [Q, V]
        h = self._gather_leaves(leaves, layers)
        def regroup(grads):
            return self._gather_leaves(dict(zip(present, grads)), layers)

        return log_norm, reply, picked, h, [leaves[layer] for layer in present], regroup

    @staticmethod
    def _gather_leaves(per_layer: dict[int, torch.Tensor], layers: torch.Tensor) -> torch.Tensor:
        """Reassemble per-layer [Q_L, D] tensors into query order [Q, D]."""
        first = next(iter(per_layer.values()))
        out = torch.empty((len(layers), first.shape[-1]), dtype=first.dtype, device=first.device)
        for layer, tensor in per_layer.items():
            out[(layers == layer).nonzero().squeeze(-1)] = tensor
        return out

    def _expanded_cache(self, prompts: torch.Tensor) -> DynamicCache | None:
        """A fresh cache holding each row's prompt prefix; the stored tensors stay untouched."""
        if self._kv is None:
            return None
        data = [(k.index_select(0, prompts), v.index_select(0, prompts)) for k, v in self._kv]
        return DynamicCache(ddp_cache_data=data, config=self.model.config)
