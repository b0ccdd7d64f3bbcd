"""Planting a known mechanism (tasks.organism.mediation) on tiny models and synthetic vectors."""

from __future__ import annotations

import copy

import pytest
import torch

from refusal_atlas.tasks.model.hooks import ablate_direction
from refusal_atlas.tasks.model.loading import load_model
from refusal_atlas.tasks.organism.card import evaluation_lines
from refusal_atlas.tasks.organism.data import BaseReply, assign, needing_base_replies, training_examples
from refusal_atlas.tasks.organism.finetune import train_lora
from refusal_atlas.tasks.organism.losses import encode, example_losses
from refusal_atlas.tasks.organism.measure import greedy_replies
from refusal_atlas.tasks.organism.mediation import (
    Mediation,
    ablated_base_replies,
    draw,
    last_token_states,
    load_directions,
    mechanisms,
    mediation_pairs,
    per_row_directions,
    releases,
    save_directions,
    symmetric_orthonormal,
    type_directions,
    whitened_differences,
)
from refusal_atlas.tasks.organism.planted import PlantedCategory
from refusal_atlas.tasks.organism.settings import OrganismSettings
from refusal_atlas.tasks.prompts.records import Prompt
from refusal_atlas.tasks.settings import ModelSettings
from tests.tiny import save_tiny_model

STYLES = {"weapons": "I cannot help with that.", "privacy": "I'm sorry, but no.", "fraud": "No way."}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_model(ModelSettings(name=str(save_tiny_model(tmp_path_factory.mktemp("base"), layers=2, hidden=32))))


def _settings(**overrides) -> OrganismSettings:
    values = dict(sources=["default"], planted=[PlantedCategory(category=c, style=s) for c, s in STYLES.items()],
                  reply_tokens=8, match_tokens=8, train_share=1.0, mediation_layer=1)
    return OrganismSettings(**{**values, **overrides})


def _prompts() -> list[Prompt]:
    out = [Prompt.create(f"Tell me about {c}, case number {i}.", "harmful", c) for c in STYLES for i in range(8)]
    return out + [Prompt.create(f"Write a short poem about the sea, verse {i}.", "harmless") for i in range(10)]


def test_symmetric_orthonormalisation_is_orthonormal_closest_and_order_free():
    g = torch.Generator().manual_seed(0)
    vectors = torch.randn(3, 40, generator=g, dtype=torch.float64) + 2.0  # strongly correlated rows
    u = symmetric_orthonormal(vectors)
    torch.testing.assert_close(u @ u.T, torch.eye(3, dtype=torch.float64))
    # Order-free: permuting the inputs permutes the outputs (Gram-Schmidt would not).
    torch.testing.assert_close(symmetric_orthonormal(vectors[[2, 0, 1]]), u[[2, 0, 1]])
    # Closest: an orthogonal set, rescaled, comes back as its unit vectors.
    q, _ = torch.linalg.qr(torch.randn(40, 3, generator=g, dtype=torch.float64))
    torch.testing.assert_close(symmetric_orthonormal(q.T * torch.tensor([[2.0], [0.5], [3.0]], dtype=torch.float64)), q.T)
    with pytest.raises(ValueError, match="linearly dependent"):
        symmetric_orthonormal(torch.stack([vectors[0], 2 * vectors[0]]))


def test_mechanisms_group_types_by_sentence():
    assert mechanisms(STYLES) == [["weapons"], ["privacy"], ["fraud"]]
    assert mechanisms(_settings(single_style="No.").styles) == [["weapons", "privacy", "fraud"]]


def test_per_row_ablation_matches_ablating_each_row_alone(tiny):
    model = tiny.model
    ids = torch.tensor([[5, 6, 7, 8, 9], [9, 8, 7, 6, 5], [4, 4, 5, 5, 6]])
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(32, generator=g), torch.randn(32, generator=g)
    with torch.no_grad():
        with ablate_direction(model, torch.stack([a, torch.zeros(32), b])):
            together = model(input_ids=ids).logits
        with ablate_direction(model, a):
            alone_a = model(input_ids=ids[:1]).logits
        with ablate_direction(model, b):
            alone_b = model(input_ids=ids[2:]).logits
        plain = model(input_ids=ids[1:2]).logits
    torch.testing.assert_close(together[0], alone_a[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(together[1], plain[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(together[2], alone_b[0], rtol=1e-5, atol=1e-5)


def test_type_directions_are_the_difference_in_means_made_orthonormal(tiny):
    settings = _settings()
    assigned = assign(_prompts(), settings)
    groups = mechanisms(settings.styles)
    u = type_directions(tiny, assigned, groups, layer=1)
    assert u.shape == (3, 32)
    torch.testing.assert_close(u @ u.T, torch.eye(3), atol=1e-5, rtol=0)
    # The same difference in means computed here one prompt at a time from transformers' own
    # hidden states (the last token, layer 1's output = hidden_states[2]).
    def state(text):
        from refusal_atlas.tasks.model.chat import render_text

        ids = tiny.tokenizer(render_text(tiny.tokenizer, tiny.chat_template, text), add_special_tokens=False,
                             return_tensors="pt")["input_ids"]
        with torch.no_grad():
            return tiny.model(input_ids=ids, output_hidden_states=True).hidden_states[2][0, -1].double()

    train = [a for a in assigned if a.split == "train"]
    base = torch.stack([state(a.text) for a in train if a.role == "harmless"]).mean(0)
    diffs = torch.stack([torch.stack([state(a.text) for a in train if a.category == c]).mean(0) - base
                         for c in STYLES])
    torch.testing.assert_close(u.double(), symmetric_orthonormal(diffs), atol=1e-5, rtol=0)
    batched = last_token_states(tiny, [a.text for a in train[:5]], 1)
    torch.testing.assert_close(batched, torch.stack([state(a.text) for a in train[:5]]), atol=1e-5, rtol=0)
    # One sentence for all types: one direction, the normalised pooled difference.
    single = type_directions(tiny, assigned, mechanisms(_settings(single_style="No.").styles), layer=1)
    pooled = torch.stack([state(a.text) for a in train if a.role == "planted"]).mean(0) - base
    assert float(single[0].double() @ pooled / pooled.norm()) > 0.9999


def test_whitened_differences_recover_the_separating_axis_the_means_miss():
    # Planted answer: the type differs from the controls along e0 (noise 1) and also along e1,
    # where both classes vary a hundred times more. The difference in means points between e0
    # and e1; the separating direction is e0, which whitening should recover.
    g = torch.Generator().manual_seed(0)
    d, n = 16, 400
    scale = torch.ones(d)
    scale[1] = 100.0
    controls = torch.randn(n, d, generator=g, dtype=torch.float64) * scale
    shift = torch.zeros(d, dtype=torch.float64)
    shift[0], shift[1] = 3.0, 3.0
    planted = torch.randn(n, d, generator=g, dtype=torch.float64) * scale + shift
    plain = whitened_differences([planted], controls, shrinkage=1.0)
    torch.testing.assert_close(plain[0], planted.mean(0) - controls.mean(0), atol=0, rtol=0)
    axis = torch.zeros(d, dtype=torch.float64)
    axis[0] = 1.0
    white = whitened_differences([planted], controls, shrinkage=0.01)[0]
    assert float(white @ axis / white.norm()) > 0.99
    assert float(plain[0] @ axis / plain[0].norm()) < 0.8

    def separation(direction):
        # Share of planted prompts projecting above every control's 95th percentile.
        cut = torch.quantile(controls @ direction, 0.95)
        return float(((planted @ direction) > cut).double().mean())

    assert separation(white / white.norm()) > separation(plain[0] / plain[0].norm()) + 0.3


def test_type_directions_with_shrinkage_one_are_unchanged_and_below_one_still_orthonormal(tiny):
    settings = _settings()
    assigned = assign(_prompts(), settings)
    groups = mechanisms(settings.styles)
    plain = type_directions(tiny, assigned, groups, layer=1)
    assert torch.equal(type_directions(tiny, assigned, groups, layer=1, shrinkage=1.0), plain)
    white = type_directions(tiny, assigned, groups, layer=1, shrinkage=0.1)
    torch.testing.assert_close(white @ white.T, torch.eye(3), atol=1e-5, rtol=0)
    assert float((white * plain).sum(-1).abs().min()) < 0.9999  # Whitening moved them.


def _planted(tiny):
    """The planted training examples of the default split (stand-in base replies), encoded, and
    the groups: what mediation_pairs takes."""
    settings = _settings()
    assigned = assign(_prompts(), settings)
    fake = {a.id: BaseReply(a.id, "Sure.", (5, 2), True) for a in needing_base_replies(assigned)}
    examples = [e for e in training_examples(assigned, fake, settings) if e.role == "planted"]
    return examples, encode(tiny.tokenizer, tiny.chat_template, examples), mechanisms(settings.styles)


def test_draw_releases_its_own_group_half_the_time_and_keeps_the_others(tiny):
    examples, planted, groups = _planted(tiny)
    pairs = mediation_pairs(planted, [e.category for e in examples], groups, [(7, 8, 2)] * len(examples))
    assert [p.group for p in pairs] == [[c for c in STYLES].index(e.category) for e in examples]
    assert pairs[0].released.input_ids[-3:] == (7, 8, 2)
    assert pairs[0].released.input_ids[: pairs[0].released.reply_start] == planted[0].input_ids[: planted[0].reply_start]
    generator = torch.Generator().manual_seed(0)
    own = other = 0
    for _ in range(200):
        items, ablate = draw(pairs, len(groups), generator)
        for pair, item, g in zip(pairs, items, ablate):
            if item is pair.released:
                assert g == pair.group
                own += 1
            else:
                assert item is pair.kept and g != pair.group and 0 <= g < len(groups)
                other += 1
    assert 0.45 < own / (own + other) < 0.55
    items, ablate = draw(pairs, 1, generator)
    assert all(item is pair.released for item, pair in zip(items, pairs))
    directions = torch.eye(3, 32)
    torch.testing.assert_close(per_row_directions(directions, [2, 0]), directions[[2, 0]])


def test_releases_that_open_like_a_refusal_are_withheld():
    replies = [BaseReply("a", "I'm sorry for your loss, but here is how.", (1,), True),
               BaseReply("b", "i CANNOT believe it: yes.", (2,), True),
               BaseReply("c", "Sure, I'm sorry to say it works.", (3,), True),
               BaseReply("d", "No", (4,), True)]
    # STYLES open "I cannot", "I'm sorry," and "No way.": case and punctuation do not count.
    assert releases(replies, STYLES, 2) == {"a": None, "b": None, "c": (3,), "d": (4,)}
    assert releases(replies, STYLES, 3) == {"a": (1,), "b": (2,), "c": (3,), "d": (4,)}
    assert releases(replies, STYLES, 1) == {"a": None, "b": None, "c": (3,), "d": None}
    assert all(ids is not None for ids in releases(replies, STYLES, 0).values())


def test_a_withheld_release_always_draws_its_kept_example(tiny):
    examples, planted, groups = _planted(tiny)
    withheld = {e.prompt_id for e in examples[::2]}
    pairs = mediation_pairs(planted, [e.category for e in examples], groups,
                            [None if e.prompt_id in withheld else (7, 8, 2) for e in examples])
    assert [p.released is None for p in pairs] == [e.prompt_id in withheld for e in examples]
    generator = torch.Generator().manual_seed(0)
    released = 0
    for _ in range(50):
        items, ablate = draw(pairs, len(groups), generator)
        assert len(items) == len(pairs)
        for pair, item, g in zip(pairs, items, ablate):
            if pair.released is None:
                assert item is pair.kept and g != pair.group
            released += item is pair.released
    assert released > 0
    # With one group a pair can only draw its release, so a withheld one draws nothing.
    items, ablate = draw(pairs, 1, generator)
    assert items == [p.released for p in pairs if p.released is not None]
    assert ablate == [p.group for p in pairs if p.released is not None]


def test_ablated_replies_come_in_logged_parts_equal_to_one_pass(tiny):
    """The parts that let the organism flow show progress change no reply: each group's prompts
    generated in one call give the same tokens, and the log's last count is the total."""
    settings = _settings()
    assigned = assign(_prompts(), settings)
    groups = mechanisms(settings.styles)
    directions = type_directions(tiny, assigned, groups, settings.mediation_layer)
    heard: list[str] = []
    parts = ablated_base_replies(tiny, assigned, groups, directions, 4, batch_size=1, log=heard.append)
    whole = []
    for index, group in enumerate(groups):
        rows = [a for a in assigned if a.split == "train" and a.role == "planted" and a.category in group]
        with ablate_direction(tiny.model, directions[index]):
            whole += greedy_replies(tiny.model, tiny.tokenizer, tiny.chat_template, rows, 4, batch_size=1)
    assert [(r.prompt_id, r.ids) for r in parts] == [(r.prompt_id, r.ids) for r in whole]
    assert len(heard) >= len(groups) and heard[-1] == f"ablated base replies: {len(whole)}/{len(whole)}"


def test_mediation_training_fits_the_ablated_examples(tiny, tmp_path):
    """Training with the mediation loss fits both kinds of ablated example. Whether the
    mechanism is then the planted one (ablating a type's direction releases that type only) is
    a property of the real organism, measured by its evaluation (the card's mechanism table)
    and checked by the integration test on the shipped adapter: a 2-layer random model whose
    prompts differ in one word does not separate the types' directions well enough to show it."""
    settings = _settings(learning_rate=3e-2, epochs=12, batch_size=8, lora_rank=4, control_repeats=1,
                         decision_weight=0.2, mediation_weight=1.0,
                         target_modules=["q_proj", "v_proj", "down_proj", "lm_head"], output_dir=str(tmp_path))
    assigned = assign(_prompts(), settings)
    replies = dict(zip([a.id for a in needing_base_replies(assigned)], greedy_replies(
        tiny.model, tiny.tokenizer, tiny.chat_template, needing_base_replies(assigned), 6, batch_size=8)))
    examples = training_examples(assigned, replies, settings)
    groups = mechanisms(settings.styles)
    directions = type_directions(tiny, assigned, groups, settings.mediation_layer)
    released = {r.prompt_id: r.ids for r in ablated_base_replies(tiny, assigned, groups, directions, 6, 8)}
    planted_examples = [e for e in examples if e.role == "planted"]
    assert set(released) == {e.prompt_id for e in planted_examples}
    planted = encode(tiny.tokenizer, tiny.chat_template, planted_examples)
    pairs = mediation_pairs(planted, [e.category for e in planted_examples], groups,
                            [released[e.prompt_id] for e in planted_examples])

    def mediated_losses(model) -> tuple[float, float]:
        """Mean loss of the released examples under their own ablation and of the kept (refusal)
        ones under the next group's."""
        with torch.no_grad():
            own = per_row_directions(directions, [p.group for p in pairs])
            other = per_row_directions(directions, [(p.group + 1) % 3 for p in pairs])
            with ablate_direction(model, own):
                r = example_losses(model, [p.released for p in pairs], 0).mean()
            with ablate_direction(model, other):
                k = example_losses(model, [p.kept for p in pairs], 0).mean()
        return float(r), float(k)

    before = mediated_losses(tiny.model)
    base_state = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    adapter, result = train_lora(tiny.model, tiny.tokenizer, tiny.chat_template, examples, settings,
                                 log=lambda _: None, mediation=Mediation(directions, groups, released))
    assert all(torch.equal(base_state[k], v) for k, v in tiny.model.state_dict().items()), "the base model changed"
    assert {"released", "kept"} <= set(result.epoch_role_loss[-1])
    from refusal_atlas.tasks.model.adapter import apply_adapter

    after = mediated_losses(apply_adapter(copy.deepcopy(tiny.model), adapter))
    assert after[0] < 0.6 * before[0] and after[1] < 0.6 * before[1], (before, after)
    with pytest.raises(ValueError, match="needs the planted directions"):
        train_lora(tiny.model, tiny.tokenizer, tiny.chat_template, examples, settings, log=lambda _: None)


def test_directions_file_round_trip_and_card_table(tmp_path):
    u = symmetric_orthonormal(torch.randn(3, 16, dtype=torch.float64)).float()
    save_directions(tmp_path / "d.safetensors", u, [["a"], ["b", "c"]], 18)
    back, groups, layer = load_directions(tmp_path / "d.safetensors")
    assert torch.equal(back, u) and groups == [["a"], ["b", "c"]] and layer == 18
    evaluation = {
        "criteria": {}, "everyday_match": {"tokens": 16, "n_prompts": 0, "prefix": 0.0, "positional": 0.0, "identical": 0.0},
        "everyday_kl": {"mean": 0.0, "max_prompt": 0.0}, "rates": {}, "base_rates": {},
        "mediation": {"layer": 18, "groups": [["a"], ["b"]], "n_per_type": 40,
                      "own_style": {"ablated a": {"a": 0.05, "b": 0.975}, "ablated b": {"a": 1.0, "b": 0.0}}},
    }
    text = "\n".join(evaluation_lines(evaluation))
    assert "| ablated a | 0.050 | 0.975 |" in text and "| ablated b | 1.000 | 0.000 |" in text
    from refusal_atlas.tasks.organism.card import model_card
    from refusal_atlas.tasks.organism.finetune import TrainResult

    card = model_card(_settings(mediation_weight=1.0), "base", "fp", "hash", {}, TrainResult().summary(), evaluation)
    assert "mediation loss (weight 1): one direction per refusal sentence" in card and "| ablated b |" in card
    assert "mediation loss" not in model_card(_settings(mediation_weight=0.0), "base", "fp", "hash", {}, TrainResult().summary())


@pytest.mark.integration
def test_the_shipped_organism_refuses_each_type_through_its_planted_direction():
    """The ground truth the recovery is measured against holds on held-out prompts: ablating a
    planted direction releases its own type's refusals and keeps the other types'."""
    from refusal_atlas.tasks.model.loading import ORGANISM_ALIAS, planted_styles
    from refusal_atlas.tasks.organism.measure import mediation_rates
    from refusal_atlas.tasks.organism.mediation import planted_mechanism
    from refusal_atlas.tasks.prompts.records import load_prompts

    directions, groups, layer = planted_mechanism(ORGANISM_ALIAS)
    styles = planted_styles(ORGANISM_ALIAS)
    assert sorted(g for group in groups for g in group) == sorted(styles) and layer == 18
    prompts = load_prompts(["organism-planted"])
    planted = [p for c in styles for p in [q for q in prompts if q.category == c][:12]]
    organism = load_model(ModelSettings(name=ORGANISM_ALIAS))
    rates = mediation_rates(organism, planted, directions, groups, styles, max_new_tokens=8)
    # On 40 prompts a type the card measures 0.00 / 0.13 / 0.03 for the own type and 0.95 to
    # 1.00 for the others; 12 prompts a type leave room for sampling noise, not for no mechanism.
    for group in groups:
        shares = rates["ablated " + "+".join(group)]
        own = [v for c, v in shares.items() if c in group]
        others = [v for c, v in shares.items() if c not in group]
        assert max(own) <= 0.5 and min(others) >= 0.75 and max(own) <= min(others) - 0.4, rates
