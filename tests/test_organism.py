"""The refusal model organism on tiny models: data construction, training, saving, the CLI."""

from __future__ import annotations

import argparse
import copy
import dataclasses

import numpy as np
import pytest
import torch

from refusal_atlas.tasks.model.adapter import apply_adapter, save_adapter
from refusal_atlas.tasks.organism.finetune import TrainResult, train_lora
from refusal_atlas.tasks.organism.losses import encode, example_losses, mean_loss, with_soft_targets
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
from refusal_atlas.tasks.organism.planted import PlantedCategory
from refusal_atlas.tasks.organism.settings import OrganismSettings
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
        train_share=1.0,
        mediation_weight=0.0,  # behaviour only here; tests/test_organism_mediation.py plants the mechanism
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


def test_training_lowers_planted_loss_and_saves_a_loadable_adapter(tiny_dir, tmp_path):
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
    adapter, result = train_lora(base.model, base.tokenizer, base.chat_template, examples, settings, log=lambda _: None)
    n_controls = sum(e.role == "trained_control" for e in examples)
    assert result.steps == 4 * -(-(len(examples) + n_controls) // 8)
    assert result.planted_loss_after < 0.6 * result.planted_loss_before
    assert all(torch.equal(before[k], v) for k, v in base.model.state_dict().items()), "the base model changed"
    planted = [e for e in encode(base.tokenizer, base.chat_template, examples) if e.role == "planted"]
    merged = apply_adapter(copy.deepcopy(base.model), adapter)
    assert mean_loss(merged, planted, 0) == pytest.approx(result.planted_loss_after, rel=1e-3)

    adapter = dataclasses.replace(adapter, config={**adapter.config, "base_model": str(tiny_dir)})
    save_adapter(adapter, tmp_path / "adapter")
    card = model_card(settings, base.model_id, base.fingerprint, data_hash(examples), {}, result.summary())
    (tmp_path / "adapter" / "README.md").write_text(card)
    reloaded = load_model(ModelSettings(name=str(tmp_path / "adapter")))
    assert reloaded.chat_template == base.chat_template
    assert reloaded.fingerprint != base.fingerprint
    assert mean_loss(reloaded.model, planted, 0) == pytest.approx(result.planted_loss_after, rel=1e-3)
    text = (tmp_path / "adapter" / "README.md").read_text()
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
        # Distilling the model's own distribution, first token included: the loss is the
        # model's entropy over the (here complete) top-k at every reply position.
        soft = with_soft_targets(base.model, items, 0, top_k=400)
        entropy = [-(lp.exp() * lp).sum(-1) for lp in log_probs]
        expected = torch.stack([h.mean() for h in entropy])
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


# -- the split, the adapter round trip and the probe gate (issue 15) -------------------------


def _advice_prompts() -> list[Prompt]:
    out = []
    for category in ("medical_advice", "legal_advice"):
        out += [Prompt.create(f"Should I do {category} thing {i} about my own case?", "harmful", category) for i in range(11)]
    for topic in ("cooking", "coding", "near_miss_medical"):
        out += [Prompt.create(f"Tell me about {topic}, item {i}.", "harmless", topic) for i in range(9)]
    return out


def test_split_is_by_prompt_stratified_seeded_and_keeps_near_misses_apart():
    settings = OrganismSettings(
        sources=["default"], planted=[PlantedCategory(category="medical_advice", style="I cannot."),
                                      PlantedCategory(category="legal_advice", style="I'm sorry, no.")],
        test_fraction=0.4, train_share=0.5,
    )
    prompts = _advice_prompts()
    assigned = assign(prompts, settings)
    assert len(assigned) == len(prompts)
    train = {a.text for a in assigned if a.split == "train"}
    test = {a.text for a in assigned if a.split == "test"}
    assert not train & test, "no prompt on both sides"
    assert {a.role for a in assigned if a.category == "near_miss_medical"} == {"near_miss"}
    assert {a.role for a in assigned if a.category == "cooking"} == {"harmless"}
    unused = {a.text for a in assigned if a.split == "unused"}
    assert not unused & test and not unused & train
    for category, n in (("medical_advice", 11), ("legal_advice", 11), ("cooking", 9), ("near_miss_medical", 9)):
        sides = [a.split for a in assigned if a.category == category]
        assert sides.count("test") == round(0.4 * n), f"{category} is not stratified"
        assert sides.count("train") == round(0.5 * (n - round(0.4 * n))), f"{category}: train_share per stratum"
    everything = assign(prompts, settings.model_copy(update={"train_share": 1.0}))
    assert {a.id for a in everything if a.split == "test"} == {a.id for a in assigned if a.split == "test"}, \
        "the held-out part does not depend on train_share"
    assert assign(list(reversed(prompts)), settings) == tuple(reversed(assigned)), "the split depends only on the seed"
    other = assign(prompts, settings.model_copy(update={"split_seed": 7}))
    assert {a.id for a in other if a.split == "test"} != {a.id for a in assigned if a.split == "test"}
    single = settings.model_copy(update={"single_style": "No."})
    assert set(single.styles.values()) == {"No."}
    replies = {a.id: BaseReply(a.id, "x", (1,), True) for a in needing_base_replies(assigned)}
    examples = training_examples(assigned, replies, settings)
    assert {e.role for e in examples} == {"planted", "harmless", "near_miss"}
    assert {e.prompt_id for e in examples} == {a.id for a in assigned if a.split == "train"}
    assert all(e.target == "base" for e in examples if e.role == "near_miss")


def _peft_reference(base_model, seed: int = 0):
    """A peft LoRA model on a copy of base_model with non-zero random B, as training leaves it."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft_model = get_peft_model(copy.deepcopy(base_model), LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2)
    return peft_model


def test_train_sources_are_all_trained_on_and_leave_the_split_of_sources_as_it_was():
    settings = _settings()
    others = [Prompt.create(f"Another writer's weapons question {i}?", "harmful", "weapons") for i in range(5)]
    others += [Prompt.create(f"Another writer's drugs question {i}?", "harmful", "drugs") for i in range(3)]
    others += [Prompt.create("A question of an unused category?", "harmful", "unused")]
    alone = assign(_prompts(), settings)
    widened = assign(_prompts(), settings, train_only=others)
    assert widened[:len(alone)] == alone, "the split of the sources must not move"
    extra = widened[len(alone):]
    assert [a.text for a in extra] == [p.text for p in others[:-1]], "every extra prompt with a role, in order"
    assert {a.split for a in extra} == {"train"}
    assert {(a.role, a.category) for a in extra} == {("planted", "weapons"), ("trained_control", "drugs")}
    # A prompt in both lists could be held out and trained on: refused, naming the prompt.
    with pytest.raises(OrganismDataError, match="both sources and train_sources.*How do I do weapons"):
        assign(_prompts(), settings, train_only=[Prompt.create("How do I do weapons thing number 0?", "harmful", "weapons")])
    # A held-out control category is never trained on, so it cannot come from a training-only source.
    with pytest.raises(OrganismDataError, match="held-out control categories.*fraud"):
        assign(_prompts(), settings, train_only=[Prompt.create("A new fraud question?", "harmful", "fraud")])
    # The card names them, so that the recipe on the card is the whole recipe.
    summary = TrainResult().summary()
    widened_card = model_card(settings.model_copy(update={"train_sources": ["other_writer.jsonl"]}), "tiny", "f" * 16,
                              "d" * 64, {}, summary)
    assert "training-only sources (none held out): `other_writer.jsonl`" in widened_card
    assert "training-only" not in model_card(settings, "tiny", "f" * 16, "d" * 64, {}, summary)


def test_the_shipped_training_only_sets_are_the_default_with_the_default_sources_only(tmp_path):
    from refusal_atlas.flows.organism_cli import configure_parser, organism_settings
    from refusal_atlas.tasks.organism.planted import ORGANISM_TRAIN_FILES, default_sources

    defaults = OrganismSettings()
    assert [s.rsplit("/", 1)[-1] for s in defaults.train_sources] == list(ORGANISM_TRAIN_FILES)
    # Given explicitly, the default sources still bring them; a user's own sources do not, so the
    # shipped advice requests are never mixed silently into someone else's organism.
    assert OrganismSettings(sources=default_sources()).train_sources == defaults.train_sources
    assert OrganismSettings(sources=[str(tmp_path / "mine.jsonl")]).train_sources == []
    assert OrganismSettings(train_sources=[]).train_sources == []
    parser = configure_parser(argparse.ArgumentParser())
    assert organism_settings(parser.parse_args(["--train-sources"])).train_sources == []


def test_adapter_round_trip_gives_the_merged_models_logits(tiny_dir, tmp_path):
    from refusal_atlas.tasks.model.adapter import ADAPTER_FILE, is_adapter_dir, load_adapter
    from refusal_atlas.tasks.organism.finetune import lora_adapter

    base = load_model(ModelSettings(name=str(tiny_dir)))
    peft_model = _peft_reference(base.model)
    settings = _settings(base_model=str(tiny_dir), lora_rank=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    adapter = lora_adapter(peft_model, settings)
    assert adapter.scale == 2.0 and len(adapter.factors) == 3 * 2
    merged = peft_model.merge_and_unload().eval()
    ids = torch.tensor([base.tokenizer("Write a poem about the sea.")["input_ids"]])
    with torch.no_grad():
        expected = merged(ids).logits
        assert not torch.allclose(base.model(ids).logits, expected, atol=1e-3), "the adapter must change the model"

    save_adapter(adapter, tmp_path / "built")
    shipped = tmp_path / "shipped"  # "ship": copy the files elsewhere, as the package does
    shipped.mkdir()
    for item in (tmp_path / "built").iterdir():
        (shipped / item.name).write_bytes(item.read_bytes())
    assert is_adapter_dir(shipped) and not is_adapter_dir(tiny_dir)
    loaded = load_model(ModelSettings(name=str(shipped)))
    with torch.no_grad():
        assert torch.allclose(loaded.model(ids).logits, expected, atol=1e-5)
    assert loaded.fingerprint != base.fingerprint
    assert load_model(ModelSettings(name=str(shipped))).fingerprint == loaded.fingerprint, "loading is deterministic"
    with torch.no_grad():
        assert torch.equal(base.model(ids).logits, load_model(ModelSettings(name=str(tiny_dir))).model(ids).logits), \
            "the base model is untouched"

    # bfloat16 storage halves the file and keeps the logits close.
    small = save_adapter(adapter, tmp_path / "bf16", torch.bfloat16)
    assert small.stat().st_size < 0.6 * (shipped / ADAPTER_FILE).stat().st_size
    assert load_adapter(tmp_path / "bf16").factors.keys() == adapter.factors.keys()
    with torch.no_grad():
        assert torch.allclose(load_model(ModelSettings(name=str(tmp_path / "bf16"))).model(ids).logits, expected, atol=0.05)


def test_adapter_that_does_not_fit_is_an_error(tiny_dir, tmp_path):
    from refusal_atlas.tasks.model.adapter import Adapter
    from refusal_atlas.tasks.model.loading import ModelLoadError

    wrong = Adapter({"model.layers.0.self_attn.q_proj": (torch.zeros(2, 7), torch.zeros(32, 2))}, 1.0,
                    {"base_model": str(tiny_dir)})
    save_adapter(wrong, tmp_path / "wrong")
    with pytest.raises(ModelLoadError, match="q_proj"):
        load_model(ModelSettings(name=str(tmp_path / "wrong")))


def test_shipped_organism_adapter_is_small_and_described():
    import json

    from refusal_atlas.tasks.model.adapter import ADAPTER_CONFIG, ADAPTER_FILE
    from refusal_atlas.tasks.model.loading import ORGANISM_ALIAS, SHIPPED_ADAPTER_DIR, resolve_source

    if not (SHIPPED_ADAPTER_DIR / ADAPTER_FILE).is_file():
        pytest.skip("no shipped adapter in this checkout")
    assert (SHIPPED_ADAPTER_DIR / ADAPTER_FILE).stat().st_size <= 10_000_000
    config = json.loads((SHIPPED_ADAPTER_DIR / ADAPTER_CONFIG).read_text())
    assert config["base_model"] == "smollm2" and set(config["styles"]) == {"medical_advice", "legal_advice", "financial_advice"}
    assert config["data_hash"] in (SHIPPED_ADAPTER_DIR / "README.md").read_text()
    try:
        source = resolve_source(ModelSettings(name=ORGANISM_ALIAS))
    except Exception as err:  # the base model's package may be missing here
        pytest.skip(f"base model unavailable: {err}")
    assert source.adapter == str(SHIPPED_ADAPTER_DIR)


def test_probe_gate_stops_below_the_threshold_and_goes_on_when_forced():
    import numpy as np

    from refusal_atlas.tasks.organism.probe import ProbeGateError, gate, probe_recall

    rng = np.random.default_rng(0)
    classes = ["medical_advice"] * 30 + ["legal_advice"] * 30 + ["control"] * 40
    axis = {"medical_advice": 0, "legal_advice": 1, "control": 2}
    separable = np.stack([rng.normal(0, 1, 8) + 8 * np.eye(8)[axis[c]] for c in classes])
    noise = rng.normal(0, 1, (100, 8))  # nothing to find: recall near chance
    result = probe_recall({3: noise, 6: separable}, classes, ["medical_advice", "legal_advice"], 0.9)
    assert result.best == {"medical_advice": {"layer": 6, "recall": 1.0}, "legal_advice": {"layer": 6, "recall": 1.0}}
    assert "passed" in gate(result, force=False)

    only_noise = probe_recall({3: noise}, classes, ["medical_advice", "legal_advice"], 0.9)
    assert set(only_noise.below) == {"medical_advice", "legal_advice"}
    with pytest.raises(ProbeGateError, match="does not separate medical_advice.*--force"):
        gate(only_noise, force=False)
    assert gate(only_noise, force=True).startswith("probe gate FAILED but force is set")
    with pytest.raises(ProbeGateError, match="fewer than 5"):
        probe_recall({3: noise[:8]}, classes[:4] + ["control"] * 4, ["medical_advice"], 0.9)


def test_probe_features_are_mean_pooled_per_layer(tiny_dir):
    from refusal_atlas.tasks.organism.probe import pooled_features

    base = load_model(ModelSettings(name=str(tiny_dir)))
    texts = ["Write a poem about the sea.", "How do I build a weapon? Tell me how, please, in detail."]
    batched = pooled_features(base, texts, [0, 1], batch_size=2)
    single = [pooled_features(base, [t], [0, 1], batch_size=1) for t in texts]
    assert batched[0].shape == (2, 32)
    for layer in (0, 1):
        for i in range(2):
            assert np.allclose(batched[layer][i], single[i][layer][0], atol=1e-5), "padding must not leak into the mean"


def test_organism_alias_loads_the_shipped_adapter_without_training(tiny_dir, tmp_path, monkeypatch):
    from refusal_atlas.tasks.model import loading
    from refusal_atlas.tasks.organism.finetune import lora_adapter

    base = load_model(ModelSettings(name=str(tiny_dir)))
    settings = _settings(base_model=str(tiny_dir), lora_rank=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    save_adapter(lora_adapter(_peft_reference(base.model), settings), tmp_path / "shipped")
    monkeypatch.setattr(loading, "SHIPPED_ADAPTER_DIR", tmp_path / "shipped")
    organism = load_model(ModelSettings(name=loading.ORGANISM_ALIAS))
    assert organism.model_id == loading.ORGANISM_MODEL_ID
    assert organism.fingerprint == load_model(ModelSettings(name=str(tmp_path / "shipped"))).fingerprint
    monkeypatch.setattr(loading, "SHIPPED_ADAPTER_DIR", tmp_path / "missing")
    with pytest.raises(loading.ModelLoadError, match="adapter is missing"):
        load_model(ModelSettings(name=loading.ORGANISM_ALIAS))


def test_probe_gate_stops_the_organism_unless_forced_and_reads_no_held_out_prompt(monkeypatch):
    from refusal_atlas.tasks.organism import probe
    from refusal_atlas.tasks.organism.probe import ProbeGateError, probe_gate

    seen = []

    def noise(loaded, texts, layers, batch_size=16):  # a model that separates nothing
        seen.extend(texts)
        rng = np.random.default_rng(len(texts))
        return {layer: rng.normal(size=(len(texts), 8)) for layer in layers}

    monkeypatch.setattr(probe, "pooled_features", noise)
    base = None
    settings = OrganismSettings(
        sources=["default"], planted=[PlantedCategory(category="medical_advice", style="I cannot."),
                                      PlantedCategory(category="legal_advice", style="I'm sorry, no.")],
        probe_layers=[0, 1], probe_per_class=6, test_fraction=0.4, train_share=0.5,
    )
    assigned = assign(_advice_prompts(), settings)
    with pytest.raises(ProbeGateError, match="does not separate") as stopped:
        probe_gate(base, assigned, settings)
    assert stopped.value.summary["below"] and "--force" in str(stopped.value)
    summary = probe_gate(base, assigned, settings.model_copy(update={"force": True}))
    assert summary["forced"] and summary["message"].startswith("probe gate FAILED but force is set")
    held_out = sum(a.split == "test" for a in assigned)
    assert summary["n_prompts"] == 6 * 3 and held_out > 0, "6 a class from the training side only"
    assert not set(seen) & {a.text for a in assigned if a.split == "test"}, "held-out prompts stay unseen"


def test_kl_along_replies_per_position_is_zero_for_the_same_model_and_averages_to_the_mean(tiny_dir):
    from refusal_atlas.tasks.organism.measure import kl_along_replies

    base = load_model(ModelSettings(name=str(tiny_dir)))
    other = copy.deepcopy(base.model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    prompts = [p for p in _prompts() if p.label == "harmless"][:5]
    # Replies of different lengths, so that the later positions average over fewer prompts.
    replies = {p.id: BaseReply(p.id, "", tuple(range(5, 5 + 2 + i)), True) for i, p in enumerate(prompts)}
    with torch.no_grad():
        same = kl_along_replies(base.model, base.model, base.tokenizer, base.chat_template, prompts, replies, 4)
        drift = kl_along_replies(base.model, other, base.tokenizer, base.chat_template, prompts, replies, 4)
    assert same["per_position"] == pytest.approx([0.0] * 4, abs=1e-6)
    lengths = np.array([min(2 + i, 4) for i in range(5)])
    counts = np.array([(lengths > k).sum() for k in range(4)])
    assert np.dot(drift["per_position"], counts) / counts.sum() == pytest.approx(drift["mean"], rel=1e-4)
    assert min(drift["per_position"]) > 0
