"""Abliteration: orthogonalise every matrix that writes to the residual stream against directions.

For an orthonormal basis Q [k, D] of the directions' span, every writer W (embedding rows,
attention output and MLP output projections, and their biases) becomes W - Q^T Q W, so nothing
the model writes into the residual stream has a component in the span. That equals projecting
the span out of the embedding output and of every attention and MLP output at every position,
which removes it from every block's input (Arditi et al. 2024). Several directions are
orthonormalised first (QR): removing them one after another would not remove their span
unless they were orthogonal.

Tied embeddings (SmolLM2 ties lm_head to embed_tokens) need care: orthogonalising the shared
matrix would also change the LM head, which reads the stream rather than writing it. The copy
is therefore untied first: the LM head keeps a copy of the original weight.

The caller's model is never changed: the work is done on a deep copy.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from refusal_atlas.tasks.model.hooks import decoder_layers

#: Attribute names of a block's attention and MLP modules, and of the matrix in each that
#: writes the block's contribution to the residual stream, by model family (llama/qwen2/mistral:
#: self_attn.o_proj, mlp.down_proj; gpt2: attn.c_proj, mlp.c_proj; gpt-neox: attention.dense,
#: mlp.dense_4h_to_h; opt-like: out_proj, fc2).
_ATTENTION = ("self_attn", "attn", "attention")
_MLP = ("mlp", "feed_forward")
_WRITERS = ("o_proj", "c_proj", "dense", "out_proj", "down_proj", "dense_4h_to_h", "fc2", "w2")


class AbliterationError(ValueError):
    """The directions or the model cannot be abliterated as asked."""


@dataclass(frozen=True)
class Writer:
    """A module whose output is added to the residual stream. kind: embedding, linear, conv1d."""

    name: str
    module: nn.Module
    kind: str


def orthonormal_basis(vectors: np.ndarray | torch.Tensor) -> torch.Tensor:
    """An orthonormal basis Q [k, D] (float64) of the span of the rows of vectors [k, D]."""
    matrix = torch.as_tensor(np.asarray(vectors, dtype=np.float64))
    if matrix.ndim != 2 or matrix.shape[0] == 0:
        raise AbliterationError(f"give directions as a [k, D] matrix with k >= 1, not shape {tuple(matrix.shape)}.")
    q, r = torch.linalg.qr(matrix.T)  # q [D, k]
    diagonal = r.diagonal().abs()
    if bool((diagonal < 1e-6 * matrix.norm(dim=1).max()).any()):
        raise AbliterationError("the directions are linearly dependent (one lies in the span of the others): "
                                "drop the redundant one.")
    return q.T.contiguous()


def _child(module: nn.Module, names: Sequence[str]) -> tuple[str, nn.Module] | None:
    for name in names:
        child = getattr(module, name, None)
        if isinstance(child, nn.Module):
            return name, child
    return None


def residual_writers(model: nn.Module) -> list[Writer]:
    """Every module whose output enters the residual stream: input (and position) embeddings and,
    per decoder block, the attention output and MLP output projections."""
    from transformers.pytorch_utils import Conv1D

    writers = [Writer("input embeddings", model.get_input_embeddings(), "embedding")]
    position = getattr(getattr(model, "transformer", None), "wpe", None)
    if isinstance(position, nn.Embedding):
        writers.append(Writer("position embeddings", position, "embedding"))
    for index, block in enumerate(decoder_layers(model)):
        for part, names in (("attention", _ATTENTION), ("mlp", _MLP)):
            found = _child(block, names)
            writer = _child(found[1], _WRITERS) if found else None
            if writer is None or not isinstance(writer[1], (nn.Linear, Conv1D)):
                raise AbliterationError(
                    f"block {index} of {type(model).__name__}: no {part} output projection found "
                    f"(looked for {names} then {_WRITERS}); this architecture is not supported yet.")
            kind = "conv1d" if isinstance(writer[1], Conv1D) else "linear"
            writers.append(Writer(f"layer {index} {found[0]}.{writer[0]}", writer[1], kind))
    return writers


def ties_embeddings(model: nn.Module) -> bool:
    """Whether the LM head shares its weight with the input embedding."""
    head = model.get_output_embeddings()
    return head is not None and head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def _untie(model: nn.Module) -> None:
    head = model.get_output_embeddings()
    head.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=False)
    for config in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        config.tie_word_embeddings = False


@torch.no_grad()
def _orthogonalise(writer: Writer, q: torch.Tensor) -> None:
    """W <- W - Q^T Q W along the residual-stream axis of the writer's weight (and bias)."""
    weight = writer.module.weight
    w = weight.detach().double()
    q = q.to(device=w.device)
    if writer.kind == "linear":  # weight [D, in]: the output axis is 0
        w = w - q.T @ (q @ w)
    else:  # embedding [V, D] and Conv1D [in, D]: the output axis is 1
        w = w - (w @ q.T) @ q
    weight.copy_(w.to(weight.dtype))
    bias = getattr(writer.module, "bias", None)
    if isinstance(bias, torch.Tensor):
        b = bias.detach().double()
        bias.copy_((b - q.T @ (q @ b)).to(bias.dtype))


def _drop_dequantised_quantizer(model: nn.Module) -> bool:
    """Forget that a model came from a GGUF file whose weights transformers dequantised.

    Such a model keeps its quantizer, and save_pretrained refuses to write it ("not
    serializable"); its weights are plain tensors, so once they are orthogonalised the model is
    an ordinary one and is saved as such. Weights still packed in quantised blocks cannot be
    orthogonalised in place, so that case is refused.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return False
    # transformers' legacy GGUF path dequantises without setting `dequantize`, so the weights
    # themselves are what is checked: packed blocks are integer tensors.
    if any(not tensor.is_floating_point() for tensor in model.state_dict().values()):
        raise AbliterationError("the model's weights are packed quantised blocks, which cannot be orthogonalised: "
                                "load it dequantised (without a GGUF kernel) or from an unquantised directory.")
    model.hf_quantizer = None
    for config in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
    return True


def orthogonalised_copy(model: nn.Module, vectors: np.ndarray) -> tuple[nn.Module, dict]:
    """A deep copy of `model` whose residual writers are orthogonalised against the span of
    vectors [k, D]; and a summary (writers changed, whether the LM head was untied)."""
    hidden = int(model.config.get_text_config().hidden_size)
    if np.shape(vectors)[-1] != hidden:
        raise AbliterationError(f"directions have size {np.shape(vectors)[-1]}, but the model's hidden size is {hidden}.")
    q = orthonormal_basis(vectors)
    twin = copy.deepcopy(model)
    dequantised = _drop_dequantised_quantizer(twin)
    untied = ties_embeddings(twin)
    if untied:
        _untie(twin)
    writers = residual_writers(twin)
    for writer in writers:
        _orthogonalise(writer, q)
    return twin, {"writers": [w.name for w in writers], "untied_lm_head": untied, "rank": int(q.shape[0]),
                  "dequantised": dequantised, "dtype": str(next(twin.parameters()).dtype).removeprefix("torch.")}


def card(directions, info: dict, summary: dict, source: str) -> str:
    """The model card (README.md) of an abliterated model: what was removed, from where, how."""
    rows = "\n".join(f"| {d.name} | {d.layer} | {d.info.get('kind', '')} | {d.info.get('how', '')} |" for d in directions)
    untied = ("The source model ties its LM head to its input embedding. The LM head was untied first (it keeps "
              "a copy of the original embedding weight, and `tie_word_embeddings` is false in config.json), so "
              "that orthogonalising the embedding does not change how the model reads the residual stream."
              if summary["untied_lm_head"] else "The source model does not tie its LM head to its embedding.")
    return f"""# Abliterated model (refusal-atlas)

Made by `refusal-atlas abliterate` from `{source}`. The source model was not changed.

## What was removed

The span of {len(directions)} direction(s) (rank {summary['rank']}, orthonormalised by QR first) was
removed from every matrix that writes to the residual stream: W <- W - Q^T Q W for the input
embedding, every attention output projection and every MLP output projection (and their biases).
This equals projecting the span out of the embedding output and of every attention and MLP output
at every layer and position (Arditi et al. 2024). A direction's layer only says where the atlas
found it; its removal acts at every layer.

| direction | layer found at | kind | how it was computed |
|---|---|---|---|
{rows}

{untied}

{"The source weights came from a GGUF file and were dequantised by transformers; they are saved unquantised, in " + summary["dtype"] + "." if summary["dequantised"] else "Weights are saved in " + summary["dtype"] + "."}

## Provenance

- source model: {info.get('model_id')} (fingerprint {info.get('model_fingerprint')})
- atlas store: {info.get('store_uri')} (UUID {info.get('store_uuid')})
- matrices changed: {len(summary['writers'])}
"""


def write_abliterated(loaded, directions, info: dict, output, source: str) -> dict:
    """Save an orthogonalised copy of the loaded model, its tokenizer and a card as a new Hugging
    Face model directory `output` (written whole or not at all; see files.new_directory)."""
    from refusal_atlas.tasks.export.files import new_directory

    vectors = np.stack([d.vector.astype(np.float64) for d in directions])  # [k, D]
    with loaded.lock:
        twin, summary = orthogonalised_copy(loaded.model, vectors)
    with new_directory(output) as staging:
        twin.save_pretrained(staging)
        loaded.tokenizer.save_pretrained(staging)
        (staging / "chat_template.jinja").write_text(loaded.chat_template, encoding="utf-8")
        (staging / "README.md").write_text(card(directions, info, summary, source), encoding="utf-8")
    return summary
