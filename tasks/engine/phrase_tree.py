"""All refusal phrases as one token tree, so each gradient step runs shared tokens once.

"I cannot", "I can't" and "I'm sorry" share their first token. Rather than one sequence per
phrase, a step feeds a tree: the prompt's tokens from h's position on (a chain), then a trie of
the phrases' input tokens. Each node attends to the cached prefix and to its ancestors, and
sits at position prefix_len + depth, so it computes exactly what it would in its own sequence.
Phrase y's token y_j is predicted at the node of y_1..y_{j-1} (the chain's last node for j=1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class StepTree:
    """Nodes in topological order. tokens[i] is node i's input token, parents[i] its parent
    (-1 for the root, which is h's position), depths[i] its distance from the root.
    predictions[p] lists (node, token) pairs whose log-probabilities sum to log P(phrase p)."""

    tokens: tuple[int, ...]
    parents: tuple[int, ...]
    depths: tuple[int, ...]
    predictions: tuple[tuple[tuple[int, int], ...], ...]

    @property
    def reply_node(self) -> int:
        """The node whose next-token distribution is the reply's first token."""
        return self.predictions[0][0][0]

    def ancestors_or_self(self, node: int) -> list[int]:
        out = []
        while node >= 0:
            out.append(node)
            node = self.parents[node]
        return out


def build_step_tree(suffix: Sequence[int], phrases: Sequence[Sequence[int]]) -> StepTree:
    """suffix: the prompt's tokens from h's position to its end (at least one token);
    phrases: the token ids of each refusal phrase."""
    if not suffix:
        raise ValueError("the step needs at least h's own token")
    tokens = list(suffix)
    parents = [i - 1 for i in range(len(suffix))]
    depths = list(range(len(suffix)))
    children: dict[tuple[int, int], int] = {}
    predictions = []
    for phrase in phrases:
        node = len(suffix) - 1
        pairs = []
        for j, token in enumerate(phrase):
            pairs.append((node, int(token)))
            if j == len(phrase) - 1:
                break  # The last token is only predicted, never fed.
            key = (node, int(token))
            if key not in children:
                children[key] = len(tokens)
                tokens.append(int(token))
                parents.append(node)
                depths.append(depths[node] + 1)
            node = children[key]
        predictions.append(tuple(pairs))
    return StepTree(tuple(tokens), tuple(parents), tuple(depths), tuple(predictions))


class TreeTensors:
    """The B prompts' step trees as padded tensors: tokens, positions, masks and targets."""

    def __init__(self, trees: Sequence[StepTree], device: torch.device, pad_id: int):
        n_nodes = max(len(t.tokens) for t in trees)
        n_pred = max(len(pairs) for t in trees for pairs in t.predictions)
        n_phrases = len(trees[0].predictions)
        self.tokens = torch.full((len(trees), n_nodes), pad_id, dtype=torch.long)
        self.depths = torch.zeros((len(trees), n_nodes), dtype=torch.long)
        # visible[b, i, j]: node i may attend to node j (j is i or one of its ancestors).
        self.visible = torch.zeros((len(trees), n_nodes, n_nodes), dtype=torch.bool)
        self.pred_node = torch.zeros((len(trees), n_phrases, n_pred), dtype=torch.long)
        self.pred_token = torch.zeros((len(trees), n_phrases, n_pred), dtype=torch.long)
        self.pred_valid = torch.zeros((len(trees), n_phrases, n_pred), dtype=torch.bool)
        for b, tree in enumerate(trees):
            self.tokens[b, : len(tree.tokens)] = torch.tensor(tree.tokens)
            self.depths[b, : len(tree.depths)] = torch.tensor(tree.depths)
            for i in range(n_nodes):
                # Padding nodes see only themselves, so no attention row is empty.
                self.visible[b, i, tree.ancestors_or_self(i) if i < len(tree.tokens) else [i]] = True
            for p, pairs in enumerate(tree.predictions):
                for j, (node, token) in enumerate(pairs):
                    self.pred_node[b, p, j], self.pred_token[b, p, j], self.pred_valid[b, p, j] = node, token, True
        self.reply_nodes = torch.tensor([t.reply_node for t in trees])
        for name in ("tokens", "depths", "visible", "pred_node", "pred_token", "pred_valid", "reply_nodes"):
            setattr(self, name, getattr(self, name).to(device))

    def inputs(self, prompts: torch.Tensor, prefix_mask: torch.Tensor, prefix_lens: torch.Tensor, dtype: torch.dtype):
        """Token ids [Q, N], an additive 4D attention mask [Q, 1, N, T + N] and position ids [Q, N]."""
        n_nodes = self.tokens.shape[1]
        seen = prefix_mask[prompts].bool().unsqueeze(1).expand(-1, n_nodes, -1)  # [Q, N, T]
        allowed = torch.cat([seen, self.visible[prompts]], dim=-1)  # [Q, N, T + N]
        mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
        mask = mask.masked_fill(~allowed, torch.finfo(dtype).min).unsqueeze(1)
        positions = prefix_lens[prompts].unsqueeze(1) + self.depths[prompts]
        return self.tokens[prompts], mask, positions

    def phrase_log_probs(self, picked: torch.Tensor, log_norm: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        """log P(phrase) [Q, P]: each predicted token's logit, picked [Q, P, J] (picked_logits or
        picked_from_hidden), minus its node's log-normaliser, log_norm [Q, N] (logsumexp over the
        vocabulary), summed over the phrase's predictions.

        This is log_softmax read at the predicted tokens, without the [Q, N, V] log-probabilities
        (and, in the backward pass, without a [Q, N, V] gradient of an indexing): only the
        logsumexp touches the whole vocabulary."""
        nodes, valid = self.pred_node[prompts], self.pred_valid[prompts]
        q = torch.arange(len(prompts), device=log_norm.device)[:, None, None]
        terms = picked - log_norm[q, nodes]  # [Q, P, J]
        return torch.where(valid, terms, torch.zeros_like(terms)).sum(-1)

    def picked_logits(self, logits: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        """The predicted tokens' logits [Q, P, J] read off full logits [Q, N, V]."""
        q = torch.arange(len(prompts), device=logits.device)[:, None, None]
        return logits[q, self.pred_node[prompts], self.pred_token[prompts]]

    def picked_from_hidden(self, normed: torch.Tensor, head: torch.nn.Linear, prompts: torch.Tensor) -> torch.Tensor:
        """The predicted tokens' logits [Q, P, J] from the final normed states [Q, N, D]: each is
        the dot product of its node's state with its token's row of the head's weight [V, D],
        accumulated in float32 (float64 for a float64 head) and rounded to the head's dtype, as
        the head's own matmul is."""
        acc = torch.promote_types(head.weight.dtype, torch.float32)
        q = torch.arange(len(prompts), device=normed.device)[:, None, None]
        states = normed[q, self.pred_node[prompts]].to(acc)  # [Q, P, J, D]
        rows = head.weight[self.pred_token[prompts]].to(acc)  # [Q, P, J, D]
        picked = (states * rows).sum(-1)
        if head.bias is not None:
            picked = picked + head.bias[self.pred_token[prompts]].to(acc)
        return picked.to(head.weight.dtype)
