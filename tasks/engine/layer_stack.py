"""Run a slice of a causal LM's decoder layers by hand, on top of a cached prompt prefix.

The engine's gradient steps replace layer L's output at one position, so the layers at or below
L never change between steps. `LayerStack` lets the engine run the embeddings and layers
0..L once per batch, and then only layers L+1..N-1 plus the final norm and the language-model
head at every step. It computes each decoder block as the model's own forward does
(transformers 5.x), with the engine's additive 4D tree mask and each row's cached prefix keys and
values before its own.

Rows of one call may start at different layers (a batch mixes queries at several layers L).
Rows are sorted by their first layer, so at layer i the rows that have started form a leading
slice, and only that slice runs through layer i; the others wait at their starting state.

Handled: llama and qwen2 (rotary position embeddings, without sliding window layers) and gpt2
(learned position embeddings added at the input). Any other architecture gets None from
`LayerStack.of`, and the engine falls back to full forward passes.

A llama or qwen2 block is run here from its own modules (norms, projections, MLP) rather than
through its forward, for one reason: attention. The model's attention repeats each key and
value head for the query heads that share it (grouped-query attention) before calling the
fused kernel, and in the backward pass sums the copies again; for a step's small trees
(a few nodes over a prefix of tens of tokens) that copying, not the arithmetic, was most of the
attention's time. Here the query heads that share a key head are stacked along the query axis
instead ([R, KV, G * N, hd] against [R, KV, T + N, hd]), which computes the same scores with no
copy (`_grouped_attention`; tested against the model's own forward in float64). A block whose
module or attention carries forward hooks (an intervention such as `hooks.ablate_direction`
edits the attention's output) runs through its own forward instead, so every hook applies.

Shapes: R rows, N tree nodes, T prefix length, D hidden size, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torch.nn.functional import scaled_dot_product_attention
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

_ROTARY_TYPES = ("llama", "qwen2")


class _PrefixCache:
    """Stands in for a transformers Cache inside the attention of a block: `update` returns the
    keys and values of each row's cached prefix ([R, heads, T, hd]) followed by the row's own.

    Nothing is stored back, so one set of prefix tensors serves every step of a batch.
    """

    def __init__(self, kv: Sequence[tuple[torch.Tensor, torch.Tensor]] | None):
        self.kv = kv
        self.prompts: torch.Tensor | None = None  # [R]: each active row's prompt, set per layer

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        if self.kv is None:
            return key_states, value_states
        keys, values = self.kv[layer_idx]
        return (
            torch.cat([keys.index_select(0, self.prompts), key_states], dim=2),
            torch.cat([values.index_select(0, self.prompts), value_states], dim=2),
        )


class LayerStack:
    """The parts of a supported causal LM that the engine runs by hand."""

    def __init__(self, model: nn.Module, kind: str):
        self.kind = kind
        self.lm_head = model.lm_head
        if kind == "gpt2":
            body = model.transformer
            self.layers, self.norm = body.h, body.ln_f
            self._wte, self._wpe, self._drop = body.wte, body.wpe, body.drop
        else:
            body = model.model
            self.layers, self.norm = body.layers, body.norm
            self._embed, self._rotary = body.embed_tokens, body.rotary_emb

    @classmethod
    def of(cls, model: nn.Module) -> LayerStack | None:
        """The stack of `model`, or None for architectures this module does not handle."""
        config = getattr(model, "config", None)
        kind = getattr(config, "model_type", None)
        if kind == "gpt2" and hasattr(model, "transformer") and hasattr(model, "lm_head"):
            return cls(model, kind)
        if kind in _ROTARY_TYPES and hasattr(model, "model") and hasattr(model, "lm_head"):
            # Sliding-window layers would need their own mask; leave them to the full path.
            if "sliding_attention" in (getattr(config, "layer_types", None) or ()):
                return None
            return cls(model, kind)
        return None

    def embed(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The residual stream entering layer 0 ([R, N, D]) for token ids and positions [R, N]."""
        if self.kind == "gpt2":
            return self._drop(self._wte(ids) + self._wpe(positions))
        return self._embed(ids)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[R, N, V] from the last layer's output [R, N, D]."""
        return self.lm_head(self.norm(hidden))

    def run(
        self,
        hidden: torch.Tensor,
        starts: torch.Tensor,
        stop: int,
        prompts: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor,
        prefix_kv: Sequence[tuple[torch.Tensor, torch.Tensor]] | None,
        capture: Iterable[int] = (),
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Run each row r through layers starts[r]..stop-1 and return the result [R, N, D].

        hidden: [R, N, D], row r's input to layer starts[r]; starts: [R], sorted ascending (so
        the rows that have started at any layer form a leading slice); prompts: [R], the prefix
        each row attends to; positions: [R, N]; mask: additive [R, 1, N, T + N]. Returns also
        the outputs of the layers in `capture` ([R, N, D], for rows that had started there).
        """
        starts_list = starts.tolist()
        if starts_list != sorted(starts_list):
            raise ValueError("rows must be sorted by their first layer")
        wanted = set(capture)
        cache = _PrefixCache(prefix_kv)
        rotary = grouped = None
        if self.kind != "gpt2":
            rotary = self._rotary(hidden, positions)  # (cos, sin) [R, N, hd]
            grouped = _grouped_mask(mask, self.layers[0].self_attn.num_key_value_groups)
        captured: dict[int, torch.Tensor] = {}
        first = min(starts_list, default=stop)
        for i in range(first, stop):
            # Rows whose first layer is at most i: a leading slice, because rows are sorted.
            n = int((starts <= i).sum())
            cache.prompts = prompts[:n]
            layer = self.layers[i]
            if rotary is None:
                out = layer(hidden[:n], attention_mask=mask[:n], cache=cache, use_cache=True)
            elif _hooked(layer) or _hooked(layer.self_attn):
                out = layer(hidden[:n], attention_mask=mask[:n], cache=cache, use_cache=True,
                            position_ids=positions[:n], position_embeddings=(rotary[0][:n], rotary[1][:n]))
            else:
                out = _rotary_block(layer, hidden[:n], rotary[0][:n], rotary[1][:n], grouped[:n], cache, i)
            out = out[0] if isinstance(out, tuple) else out
            hidden = out if n == len(hidden) else torch.cat([out, hidden[n:]])
            if i in wanted:
                captured[i] = hidden
        return hidden, captured


def _hooked(module: nn.Module) -> bool:
    """Whether a forward of `module` would run hooks: its own, or global module hooks. torch has
    no public query for this; these registries have been stable since torch 1.x."""
    return bool(
        module._forward_hooks or module._forward_pre_hooks
        or torch.nn.modules.module._global_forward_hooks or torch.nn.modules.module._global_forward_pre_hooks
    )


def _grouped_mask(mask: torch.Tensor, groups: int) -> torch.Tensor:
    """The additive mask [R, 1, N, K] repeated for the G query heads stacked along the query
    axis: [R, 1, G * N, K], head-major, as `_grouped_attention` stacks them."""
    rows, _, nodes, keys = mask.shape
    return mask.unsqueeze(2).expand(rows, 1, groups, nodes, keys).reshape(rows, 1, groups * nodes, keys)


def _grouped_attention(attn: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor):
    """softmax(q k^T * scale + mask) v for query heads q [R, H, N, hd] over key and value heads
    k, v [R, KV, K, hd], where heads kv * G .. kv * G + G - 1 read key head kv (G = H / KV).

    The G heads of a key head are stacked along the query axis, so each key head is read once
    and never copied; mask: [R, 1, G * N, K] (`_grouped_mask`). Returns [R, N, H * hd]."""
    rows, heads, nodes, dim = q.shape
    stacked = q.reshape(rows, k.shape[1], heads // k.shape[1] * nodes, dim)  # [R, KV, G * N, hd]
    out = scaled_dot_product_attention(stacked, k, v, attn_mask=mask, scale=attn.scaling)
    return out.view(rows, heads, nodes, dim).transpose(1, 2).reshape(rows, nodes, heads * dim)


def _rotary_block(layer: nn.Module, hidden, cos, sin, mask, cache: _PrefixCache, index: int) -> torch.Tensor:
    """One llama or qwen2 decoder block on hidden [R, N, D], as its forward computes it (pre-norm
    attention and MLP, each added to the residual stream), with the keys and values of each row's
    cached prefix before its own."""
    attn = layer.self_attn
    x = layer.input_layernorm(hidden)
    shape = (*hidden.shape[:2], -1, attn.head_dim)
    q = attn.q_proj(x).view(shape).transpose(1, 2)  # [R, H, N, hd]
    k = attn.k_proj(x).view(shape).transpose(1, 2)  # [R, KV, N, hd]
    v = attn.v_proj(x).view(shape).transpose(1, 2)
    # The function the llama attention itself applies (qwen2's is the same); cos, sin: [R, N, hd].
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    k, v = cache.update(k, v, index)
    hidden = hidden + attn.o_proj(_grouped_attention(attn, q, k, v, mask))
    return hidden + layer.mlp(layer.post_attention_layernorm(hidden))
