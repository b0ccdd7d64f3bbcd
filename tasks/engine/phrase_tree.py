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
