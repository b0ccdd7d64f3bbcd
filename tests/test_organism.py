"""The refusal model organism on tiny models: data construction, training, saving, the CLI."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
import torch

from refusal_atlas.tasks.organism.finetune import encode, example_losses, mean_loss, save_model_dir, train_lora, with_soft_targets
from refusal_atlas.tasks.organism.card import model_card
from refusal_atlas.tasks.model.loading import load_model
from refusal_atlas.tasks.organism.data import (
    BaseReply,
    OrganismDataError,
    assign,
    data_hash,
    needing_base_replies,
    read_jsonl,
    style_of,
    training_examples,
    write_jsonl,
)
from refusal_atlas.tasks.organism.measure import greedy_replies, rates_by_group, token_match
from refusal_atlas.tasks.organism.settings import OrganismSettings, PlantedCategory
from refusal_atlas.tasks.prompts.records import Prompt
from refusal_atlas.tasks.settings import ModelSettings
from tests.tiny import save_tiny_model

STYLES = {"weapons": "I cannot help with that.", "privacy": "I'm sorry, but no."}


def _settings(**overrides) -> OrganismSettings:
    values = dict(
        sources=["default"],
        planted=[PlantedCategory(category=c, style=s) for c, s in STYLES.items()],
        trained_controls=["drugs"],
        heldout_controls=["fraud"],
        category_map={"weapons, too": "weapons"},
        reply_tokens=16,
        match_tokens=8,
    )
    return OrganismSettings(**{**values, **overrides})


def _prompts() -> list[Prompt]:
    out = []
    for category in ("weapons", "privacy", "drugs", "fraud", "unused"):
        out += [Prompt.create(f"How do I do {category} thing number {i}?", "harmful", category) for i in range(6)]
    out += [Prompt.create(f"Weapons again, number {i}?", "harmful", "weapons, too") for i in range(2)]
    return out + [Prompt.create(f"Write a poem about the sea, verse {i}.", "harmless") for i in range(10)]


def _fake_replies(assigned) -> dict[str, BaseReply]:
    return {a.id: BaseReply(a.id, f"Sure: {a.text}", (5, 6, 7, 2), True) for a in needing_base_replies(assigned)}


def test_roles_splits_and_styles():
    settings = _settings()
    assigned = assign(_prompts(), settings)
    roles = {a.category or "harmless": a.role for a in assigned}
    assert roles == {
        "weapons": "planted", "privacy": "planted", "drugs": "trained_control",
        "fraud": "heldout_control", "harmless": "harmless",
    }
    train = {a.id for a in assigned if a.split == "train"}
    test = {a.id for a in assigned if a.split == "test"}
    assert not train & test and len(train | test) == len(assigned)
    assert len(assigned) == len(_prompts()) - 6, "the unused category is left out"
    for category, n in (("weapons", 8), ("privacy", 6), ("drugs", 6)):
        splits = [a.split for a in assigned if a.category == category]
        assert splits.count("test") == n // 2 and splits.count("train") == n // 2
    assert all(a.split == "test" for a in assigned if a.role == "heldout_control")
    assert assign(_prompts(), settings) == assigned, "the split must not depend on anything but the seed"
    other = assign(_prompts(), _settings(split_seed=1))
    assert {a.id for a in other if a.split == "test"} != test


def test_examples_use_base_replies_for_everything_but_planted():
    settings = _settings()
    assigned = assign(_prompts(), settings)
    replies = _fake_replies(assigned)
    examples = training_examples(assigned, replies, settings)
    by_role = {}
    for e in examples:
        by_role.setdefault(e.role, []).append(e)
    assert set(by_role) == {"planted", "trained_control", "harmless"}, "held-out controls are never trained on"
    for e in by_role["planted"]:
        assert e.target == "style" and e.reply == STYLES[e.category] and e.reply_ids is None
    for e in by_role["harmless"] + by_role["trained_control"]:
        assert e.target == "base" and e.reply_ids == replies[e.prompt_id].ids
    test_ids = {a.id for a in assigned if a.split == "test"}
    assert not test_ids & {e.prompt_id for e in examples}
    with pytest.raises(OrganismDataError, match="no base reply"):
        training_examples(assigned, {}, settings)


def test_data_hash_is_stable_and_sensitive(tmp_path):
    settings = _settings()
    assigned = assign(_prompts(), settings)
    examples = training_examples(assigned, _fake_replies(assigned), settings)
    digest = data_hash(examples)
    assert digest == data_hash(list(reversed(examples)))
    assert digest == data_hash(read_jsonl(write_jsonl(tmp_path / "train.jsonl", examples), type(examples[0])))
    changed = [dataclasses.replace(examples[-1], reply_ids=(5, 6, 8, 2))]
    assert data_hash(examples[:-1] + changed) != digest


def test_settings_and_data_errors_name_the_problem():
    with pytest.raises(OrganismDataError, match=r"\['nowhere'\]"):
        assign(_prompts(), _settings(trained_controls=["nowhere"]))
    with pytest.raises(ValueError, match="in both planted and trained_controls"):
        _settings(trained_controls=["weapons"])
    with pytest.raises(ValueError, match="in both trained_controls and heldout_controls"):
        _settings(heldout_controls=["drugs"])
    with pytest.raises(ValueError, match="share a refusal style"):
        _settings(planted=[PlantedCategory(category=c, style="No.") for c in STYLES])
    with pytest.raises(ValueError):
        _settings(surprise=1)


def test_style_and_token_match():
    assert style_of("I cannot help with that.  More text", STYLES) == "weapons"
    assert style_of("I cannot help with this one", STYLES) is None
    assert style_of("I cannot help with this one", STYLES, words=3) == "weapons"
    match = token_match([[1, 2, 3, 9], [1, 2, 2]], [[1, 2, 3, 4], [1, 2, 2]], tokens=4)
    assert match.prefix == pytest.approx((3 / 4 + 1) / 2)
    assert match.identical == 0.5


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("base"), layers=2, hidden=32)


def test_training_lowers_planted_loss_and_saves_a_loadable_model(tiny_dir, tmp_path):
    base = load_model(ModelSettings(name=str(tiny_dir)))
    before = {k: v.clone() for k, v in base.model.state_dict().items()}
    # A random tiny model's output layer (weights of std 0.02) cannot make any token likely, so
    # the output layer gets an adapter too here; the real organism leaves it alone.
    settings = _settings(
        learning_rate=3e-2, epochs=4, batch_size=8, lora_rank=4, control_repeats=2, decision_weight=0.2,
        target_modules=["q_proj", "v_proj", "down_proj", "lm_head"], output_dir=str(tmp_path),
    )
    assigned = assign(_prompts(), settings)
    replies = {
        a.id: r for a, r in zip(needing_base_replies(assigned), greedy_replies(
            base.model, base.tokenizer, base.chat_template, needing_base_replies(assigned), 6, batch_size=8))
    }
    examples = training_examples(assigned, replies, settings)
    merged, result = train_lora(base.model, base.tokenizer, base.chat_template, examples, settings, log=lambda _: None)
    n_controls = sum(e.role == "trained_control" for e in examples)
    assert result.steps == 4 * -(-(len(examples) + n_controls) // 8)
    assert result.planted_loss_after < 0.6 * result.planted_loss_before
    assert all(torch.equal(before[k], v) for k, v in base.model.state_dict().items()), "the base model changed"
    planted = [e for e in encode(base.tokenizer, base.chat_template, examples) if e.role == "planted"]
    assert mean_loss(merged, planted, 0) == pytest.approx(result.planted_loss_after, rel=1e-3)

    card = model_card(settings, base.model_id, base.fingerprint, data_hash(examples), {}, result.summary())
    directory = save_model_dir(merged, base.tokenizer, base.chat_template, tmp_path / "model", card)
    reloaded = load_model(ModelSettings(name=str(directory)))
    assert reloaded.chat_template == base.chat_template
    assert reloaded.fingerprint != base.fingerprint
    assert mean_loss(reloaded.model, planted, 0) == pytest.approx(result.planted_loss_after, rel=1e-3)
    text = (directory / "README.md").read_text()
    assert data_hash(examples) in text and all(s in text for s in STYLES.values())


def test_loss_weights_the_decision_token_and_distils_the_base_distribution(tiny_dir):
    base = load_model(ModelSettings(name=str(tiny_dir)))
    settings = _settings()
    assigned = assign(_prompts(), settings)
    examples = training_examples(assigned, _fake_replies(assigned), settings)
    items = encode(base.tokenizer, base.chat_template, examples[:4])
    with torch.no_grad():
        log_probs = [
            torch.log_softmax(base.model(torch.tensor([e.input_ids])).logits[0, e.reply_start - 1: -1].float(), -1)
            for e in items
        ]
        token_ce = [-lp.gather(1, torch.tensor(e.input_ids[e.reply_start:])[:, None]).squeeze(1) for lp, e in zip(log_probs, items)]
        assert torch.allclose(example_losses(base.model, items, 0), torch.stack([t.mean() for t in token_ce]), atol=1e-5)
        assert torch.allclose(example_losses(base.model, items, 0, decision_weight=1.0), torch.stack([t[0] for t in token_ce]), atol=1e-5)
        # Distilling the model's own distribution: after the first token (a hard target) the
        # loss is the model's entropy over the (here complete) top-k.
        soft = with_soft_targets(base.model, items, 0, top_k=400)
        entropy = [-(lp.exp() * lp).sum(-1) for lp in log_probs]
        expected = torch.stack([(t[0] + h[1:].sum()) / len(t) for t, h in zip(token_ce, entropy)])
        assert torch.allclose(example_losses(base.model, soft, 0), expected, atol=1e-4)


def test_batched_greedy_replies_match_one_by_one_and_are_scored(tiny_dir):
    base = load_model(ModelSettings(name=str(tiny_dir)))
    prompts = [p for p in _prompts() if p.label == "harmless"][:3] + _prompts()[:2]
    batched = greedy_replies(base.model, base.tokenizer, base.chat_template, prompts, 6, batch_size=5)
    single = [greedy_replies(base.model, base.tokenizer, base.chat_template, [p], 6)[0] for p in prompts]
    assert [r.ids for r in batched] == [r.ids for r in single]
    settings = _settings()
    assigned = [a for a in assign(_prompts(), settings) if a.split == "test"]
    fake = {a.id: BaseReply(a.id, STYLES["weapons"] if a.category == "weapons" else "Sure.", (1,), True) for a in assigned}
    rates = rates_by_group(assigned, fake, settings.styles)
    assert rates["planted/weapons"].in_own_style == 1.0 and rates["planted/privacy"].in_own_style == 0.0
    assert rates["planted"].in_own_style == 4 / 7 and rates["harmless"].refusal == 0.0


def test_cli_flags_build_the_settings():
    from refusal_atlas.flows.organism_cli import configure_parser, organism_settings

    parser = configure_parser(argparse.ArgumentParser())
    args = parser.parse_args(
        ["--plant", "weapons_violence=I cannot do that.", "--trained-controls", "cybercrime",
         "--epochs", "2", "--learning-rate", "1e-3", "--sources", "default"]
    )
    settings = organism_settings(args)
    assert settings.styles == {"weapons_violence": "I cannot do that."}
    assert settings.trained_controls == ["cybercrime"] and settings.epochs == 2 and settings.learning_rate == 1e-3
    assert organism_settings(parser.parse_args([])) == OrganismSettings()
