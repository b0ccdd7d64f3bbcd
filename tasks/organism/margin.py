"""A margin between the controls and the planted refusals: the refusal sentences made unlikely
on control prompts, not only the base model's reply made likely.

Why: the control loss trains the base model's reply along the base model's own path, and says
nothing about the path a refusal would take. On the eleventh organism (everyday refusals 3.8% of
held-out requests) the log-probability of the likeliest planted sentence, whole and followed by
EOS, given a *training* control prompt had median -6.3 nats and 90th percentile -3.9, the same
as on held-out ones (-6.1 and -3.8): the trained controls sit as close to the boundary as the
unseen ones, so the everyday refusals looked like a missing margin. With weight 0.1 the
fifteenth organism met the margin on the whole sentences (median -18.4 on held-out everyday
requests) and still refused as many of them, in paraphrases: the hinge was met on the subject
words, not the openings (BENCHMARKS.md), hence `refusal_margin_openings`. Held on the openings,
the sixteenth refused as many with openings and verbs it had not been told to avoid ("I'm sorry,
but I can't suggest ..."): no margin on strings has moved the decision to refuse.

So each control example in a batch also runs with one planted sentence as its reply (drawn at
random, seeded) and adds max(0, log P(sentence + EOS | prompt) + margin): zero once the sentence
is `margin` nats unlikely, so it never pushes an already-clear control further, and it cannot
fight the planted examples, whose prompts are others.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from refusal_atlas.tasks.model.chat import phrase_token_ids
from refusal_atlas.tasks.organism.losses import Encoded, reply_log_probs


def sentence_ids(tokenizer, chat_template: str, sentences: Sequence[str], eos: bool = True) -> list[tuple[int, ...]]:
    """Each refusal sentence as the reply tokens the organism is trained to emit: the sentence
    tokenised as a reply's opening, then EOS (as `losses.encode` builds a planted example); with
    eos=False, an opening that any continuation may follow."""
    end = (tokenizer.eos_token_id,) if eos else ()
    return [(*phrase_token_ids(tokenizer, chat_template, s), *end) for s in sentences]


def with_sentences(controls: Sequence[Encoded], sentences: Sequence[tuple[int, ...]],
                   generator: torch.Generator) -> list[Encoded]:
    """Each control's prompt with a randomly drawn refusal sentence as its reply (hard targets)."""
    drawn = torch.randint(len(sentences), (len(controls),), generator=generator).tolist()
    return [
        dataclasses.replace(e, input_ids=e.input_ids[: e.reply_start] + sentences[k], role="margin", soft=None)
        for e, k in zip(controls, drawn)
    ]


def sequence_log_probs(model, items: Sequence[Encoded], pad: int) -> torch.Tensor:
    """log P(reply | prompt) of each item, summed over its reply tokens [B]."""
    log_probs, rows, targets = reply_log_probs(model, items, pad)
    token = log_probs.gather(1, targets[:, None]).squeeze(1)  # [n reply positions]
    return torch.zeros(len(items), device=token.device).index_add(0, rows, token)


def margin_losses(model, items: Sequence[Encoded], pad: int, margin: float) -> torch.Tensor:
    """max(0, log P(sentence | control prompt) + margin) for each item [B]."""
    return torch.relu(sequence_log_probs(model, items, pad) + margin)
