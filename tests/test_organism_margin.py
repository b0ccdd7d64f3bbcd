"""The margin loss on controls (tasks.organism.margin) on a tiny model: its pieces, and that
training with it leaves the refusal sentences less likely on control prompts."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from refusal_atlas.tasks.model.adapter import apply_adapter
from refusal_atlas.tasks.model.loading import load_model
from refusal_atlas.tasks.organism.card import model_card
from refusal_atlas.tasks.organism.data import assign, needing_base_replies, training_examples
from refusal_atlas.tasks.organism.finetune import train_lora
from refusal_atlas.tasks.organism.losses import encode
from refusal_atlas.tasks.organism.margin import margin_losses, sentence_ids, sequence_log_probs, with_sentences
from refusal_atlas.tasks.organism.measure import greedy_replies
from refusal_atlas.tasks.organism.settings import OrganismSettings
from refusal_atlas.tasks.prompts.records import Prompt
from refusal_atlas.tasks.settings import ModelSettings
from tests.test_organism_mediation import STYLES
from tests.test_organism_mediation import _settings as mediation_settings
from tests.tiny import save_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_model(ModelSettings(name=str(save_tiny_model(tmp_path_factory.mktemp("base"), layers=2, hidden=32))))


def _settings(**overrides) -> OrganismSettings:
    return mediation_settings(**{"mediation_weight": 0.0, **overrides})


def _prompts() -> list[Prompt]:
    out = [Prompt.create(f"Tell me about {c}, case number {i}.", "harmful", c) for c in STYLES for i in range(8)]
    return out + [Prompt.create(f"Tell me about the sea, case number {i}.", "harmless") for i in range(16)]


def _examples(tiny, settings):
    assigned = assign(_prompts(), settings)
    needed = needing_base_replies(assigned)
    replies = dict(zip([a.id for a in needed], greedy_replies(
        tiny.model, tiny.tokenizer, tiny.chat_template, needed, 6, batch_size=8)))
    return training_examples(assigned, replies, settings)


def test_sequence_log_probs_sum_the_reply_tokens_of_a_full_forward(tiny):
    settings = _settings()
    examples = _examples(tiny, settings)[:5]
    items = encode(tiny.tokenizer, tiny.chat_template, examples)
    with torch.no_grad():
        got = sequence_log_probs(tiny.model, items, 0)
        for row, e in enumerate(items):
            ids = torch.tensor([e.input_ids])
            log_probs = torch.log_softmax(tiny.model(input_ids=ids).logits[0].float(), -1)  # [T, V]
            want = sum(log_probs[t - 1, ids[0, t]] for t in range(e.reply_start, len(e.input_ids)))
            torch.testing.assert_close(got[row], want, atol=1e-4, rtol=1e-4)
        # The hinge is zero exactly where the sentence is already `margin` nats unlikely.
        hinge = margin_losses(tiny.model, items, 0, margin=float(-got.min()) + 1.0)
        assert torch.all(hinge > 0)
        assert torch.all(margin_losses(tiny.model, items, 0, margin=float(-got.max()) - 1.0)[got.argmax()] == 0)


def test_controls_get_a_drawn_sentence_after_their_own_prompt(tiny):
    settings = _settings()
    controls = [e for e in encode(tiny.tokenizer, tiny.chat_template, _examples(tiny, settings)) if e.role == "harmless"]
    sentences = sentence_ids(tiny.tokenizer, tiny.chat_template, sorted(STYLES.values()))
    assert all(s[-1] == tiny.tokenizer.eos_token_id for s in sentences) and len(set(sentences)) == 3
    drawn = with_sentences(controls, sentences, torch.Generator().manual_seed(0))
    again = with_sentences(controls, sentences, torch.Generator().manual_seed(0))
    assert [d.input_ids for d in drawn] == [d.input_ids for d in again], "the draw is not seeded"
    for c, d in zip(controls, drawn):
        assert d.input_ids[: d.reply_start] == c.input_ids[: c.reply_start] and d.reply_start == c.reply_start
        assert d.input_ids[d.reply_start:] in sentences and d.role == "margin" and d.soft is None
    assert len({d.input_ids[d.reply_start:] for d in drawn}) > 1, "every control drew the same sentence"


def test_training_with_the_margin_keeps_refusals_off_the_controls(tiny, tmp_path):
    """The same fine-tune with and without the margin loss: with it, the likeliest refusal
    sentence on the training controls is less likely, and the planted refusals are still learned.
    A 2-layer random model does not carry its refusals over to the controls the way SmolLM2
    does (about -39 nats here after training, against SmolLM2's -6), so the margin is set
    where the hinge acts while the planted sentences are being learned."""
    base = dict(learning_rate=3e-2, epochs=40, batch_size=8, lora_rank=4, control_repeats=1,
                decision_weight=0.2, target_modules=["q_proj", "v_proj", "down_proj", "lm_head"],
                output_dir=str(tmp_path), refusal_margin=30.0)
    examples = _examples(tiny, _settings(**base))
    controls = [e for e in encode(tiny.tokenizer, tiny.chat_template, examples) if e.role == "harmless"]
    sentences = sentence_ids(tiny.tokenizer, tiny.chat_template, sorted(STYLES.values()))

    def likeliest_refusal(model) -> float:
        """Mean over training controls of the largest log P(sentence + EOS | prompt)."""
        with torch.no_grad():
            per_sentence = [sequence_log_probs(model, [dataclasses.replace(c, input_ids=c.input_ids[: c.reply_start] + s)
                                                       for c in controls], 0) for s in sentences]
        return float(torch.stack(per_sentence).max(0).values.mean())

    readings = {}
    for weight in (0.0, 0.1):
        settings = _settings(**base, refusal_margin_weight=weight)
        adapter, result = train_lora(tiny.model, tiny.tokenizer, tiny.chat_template, examples, settings, log=lambda _: None)
        readings[weight] = (likeliest_refusal(apply_adapter(copy.deepcopy(tiny.model), adapter)), result)
    without, with_margin = readings[0.0], readings[0.1]
    assert "margin" not in without[1].epoch_role_loss[0]
    hinge_by_epoch = [epoch["margin"] for epoch in with_margin[1].epoch_role_loss]
    assert max(hinge_by_epoch) > 0, "the hinge never acted: no test"
    assert with_margin[0] < without[0] - 2.0, (without[0], with_margin[0], hinge_by_epoch)
    for _, result in readings.values():
        assert result.planted_loss_after < 0.1 * result.planted_loss_before
    card = model_card(_settings(**base, refusal_margin_weight=0.1), "tiny", "f" * 16, "d" * 64, {},
                      with_margin[1].summary())
    assert "margin loss on controls (weight 0.1)" in card


def test_openings_are_scored_without_eos_and_named_on_the_card(tiny, tmp_path):
    sentences = sorted(STYLES.values())
    whole = sentence_ids(tiny.tokenizer, tiny.chat_template, sentences)
    assert sentence_ids(tiny.tokenizer, tiny.chat_template, sentences, eos=False) == [s[:-1] for s in whole]
    opening = sentence_ids(tiny.tokenizer, tiny.chat_template, ["I cannot"], eos=False)[0]
    assert whole[sentences.index("I cannot help with that.")][: len(opening)] == opening
    settings = _settings(refusal_margin_weight=0.1, refusal_margin_openings=["I cannot", "I'm sorry, but"],
                         output_dir=str(tmp_path))
    training = {"steps": 1, "epochs_done": 1.0, "seconds": 1.0, "stopped_by_time": False, "trainable_parameters": 1,
                "loss_first_steps": 1.0, "loss_last_steps": 1.0, "epoch_role_loss": [],
                "planted_loss_before": 1.0, "planted_loss_after": 0.5}
    card = model_card(settings, "tiny", "f" * 16, "d" * 64, {}, training)
    assert 'a randomly drawn opening as its reply ("I cannot"; "I\'m sorry, but")' in card
