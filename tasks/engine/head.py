"""The language-model head's log-normaliser, streamed over the vocabulary.

f is a log-probability, so every tree node needs logsumexp over the vocabulary of its logits,
and its gradient, W^T softmax(W x): the softmax-weighted mean of the head's rows. Computed the
obvious way, the logits [R, V] (57 MB for a step of SmolLM2) are written to memory, read back by
the max, the subtraction, the exponential and the sum, and in the backward pass a softmax of the
same size is formed again before its matmul with W. On a CPU those passes over memory cost about
as much as the head's two matmuls themselves.

`log_normaliser_from_states` runs the head in slices of the vocabulary instead. Each slice's
logits [R, C] stay in cache while an online logsumexp (a running max and a rescaled running sum,
as in flash attention) takes them in, and, when a gradient is wanted, the running softmax-weighted
sum of the slice's rows is accumulated alongside. The backward pass is then a row scaling:
d lse / d x = E_softmax[W], already computed. The multiply-adds are those of the head's forward
matmul and of its input gradient, as before; only the memory traffic is gone. Exact up to
floating-point rounding (tested against torch.logsumexp in float64).

Shapes: R rows (query-node pairs), D hidden size, V vocabulary, C the slice's width, K kept rows.
"""

from __future__ import annotations

import torch

#: Vocabulary slice width: a slice's [R, C] logits stay in cache between its two matmuls, and
#: the matmuls stay large enough to run near the machine's rate. On SmolLM2's steps, 512 and
#: 2,048 ran within 3% of 1,024 at 288 rows (batches of 8) and within 1% at 576 (batches of 16).
CHUNK = 1024


class _StreamedLogNormaliser(torch.autograd.Function):
    """lse [R] of states [R, D] through the head; the kept rows' full logits [K, V] ride along."""

    @staticmethod
    def forward(ctx, states, weight, bias, keep, chunk, want_grad):
        acc = torch.promote_types(states.dtype, torch.float32)
        rows = states.shape[0]
        running_max = torch.full((rows,), float("-inf"), dtype=acc, device=states.device)
        running_sum = torch.zeros(rows, dtype=acc, device=states.device)
        expected = torch.zeros(states.shape, dtype=acc, device=states.device) if want_grad else None
        kept = torch.empty((len(keep), weight.shape[0]), dtype=states.dtype, device=states.device)
        for start in range(0, weight.shape[0], chunk):
            w = weight[start: start + chunk]  # [C, D]
            logits = torch.nn.functional.linear(states, w, None if bias is None else bias[start: start + chunk])
            if len(keep):
                kept[:, start: start + chunk] = logits[keep]
            logits = logits.to(acc)  # [R, C]; a no-op for float32 and float64 models
            new_max = torch.maximum(running_max, logits.amax(dim=-1))
            rescale = torch.exp(running_max - new_max)  # [R]; 0 on the first slice
            probs = logits.sub_(new_max.unsqueeze(-1)).exp_()  # unnormalised, in place
            running_sum = running_sum * rescale + probs.sum(dim=-1)
            if expected is not None:
                expected.mul_(rescale.unsqueeze(-1)).add_(probs.to(w.dtype) @ w)
            running_max = new_max
        if expected is not None:
            expected.div_(running_sum.unsqueeze(-1))
            ctx.save_for_backward(expected)
        ctx.states_dtype = states.dtype
        ctx.mark_non_differentiable(kept)
        return running_max + running_sum.log(), kept

    @staticmethod
    def backward(ctx, grad_lse, grad_kept):
        (expected,) = ctx.saved_tensors
        grad_states = (grad_lse.unsqueeze(-1) * expected).to(ctx.states_dtype)
        return grad_states, None, None, None, None, None


def log_normaliser_from_states(
    states: torch.Tensor, head: torch.nn.Linear, keep: torch.Tensor, chunk: int = CHUNK
) -> tuple[torch.Tensor, torch.Tensor]:
    """logsumexp over the vocabulary of head(states), without the [R, V] logits.

    states: [R, D], the final normed states; keep: [K] row indices whose full logits are also
    wanted (the reply's first position, for the log-odds). Returns (lse [R] in float32, or
    float64 for float64 models; kept logits [K, V] in the head's dtype). The gradient reaches
    states only: the head's weight is frozen in the engine and gets none.
    """
    want_grad = torch.is_grad_enabled() and states.requires_grad
    return _StreamedLogNormaliser.apply(states, head.weight, head.bias, keep, chunk, want_grad)
