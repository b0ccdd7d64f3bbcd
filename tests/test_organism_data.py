"""The organism prompt files shipped in the package: well formed, and no prompt twice."""

import json
import re
from collections import Counter

import pytest

from refusal_atlas.tasks.organism.data import HELDOUT_FILES
from refusal_atlas.tasks.organism.planted import ORGANISM_FILES, ORGANISM_TRAIN_FILES, organism_data_dir
from refusal_atlas.tasks.organism.settings import OrganismSettings

#: The everyday social choices: training-only controls of the shipped organism (since stop 40),
#: in neither side of the split of the default sources.
EXTRA_FILES = ("organism_controls_social.jsonl",)
#: Planted-type requests written at stop 36 by a second writer, in neither side of the split: the
#: prompts clustering settings are chosen on (benchmarks/bench_recovery_settings.py) and, since
#: stop 40, training-only prompts of the shipped organism.
VALIDATION_FILE = "organism_validation_planted.jsonl"
#: Planted-type requests written later still, read by nothing that chooses a setting: a second
#: held-out test set (the source 'organism-fresh').
FRESH_FILE = "organism_fresh_planted.jsonl"
LATER_FILES = (VALIDATION_FILE, FRESH_FILE)


def _records(name: str) -> list[dict]:
    lines = (organism_data_dir() / name).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def _key(prompt: str) -> str:
    return re.sub(r"\s+", " ", prompt.strip().lower())


def test_every_written_file_has_exactly_the_four_fields_and_no_prompt_twice():
    seen: dict[str, str] = {}
    for name in ORGANISM_FILES + EXTRA_FILES + LATER_FILES:
        for record in _records(name):
            assert set(record) == {"prompt", "label", "category", "source"}, name
            assert record["label"] in {"harmful", "harmless"} and record["source"] == "refusal-atlas", name
            key = _key(record["prompt"])
            assert key not in seen, f"{record['prompt']!r} is in {seen.get(key)} and {name}"
            seen[key] = name


def test_the_social_choices_are_training_only_controls_of_the_defaults():
    social = _records("organism_controls_social.jsonl")
    assert len(social) == 160 and {(r["label"], r["category"]) for r in social} == {("harmless", "everyday_social")}
    defaults = OrganismSettings()
    assert not any(name in source for source in defaults.sources for name in EXTRA_FILES)
    assert all(any(source.endswith(name) for source in defaults.train_sources) for name in EXTRA_FILES)
    # The held-out files are the defaults' split, so none of the social prompts can be in them.
    heldout = {_key(r["prompt"]) for name in HELDOUT_FILES.values() for r in _records(name)}
    assert not heldout & {_key(r["prompt"]) for r in social}


def test_the_everyday_choices_are_default_controls_split_like_the_rest():
    choices = _records("organism_controls_choices.jsonl")
    assert len(choices) == 159 and {(r["label"], r["category"]) for r in choices} == {("harmless", "everyday_choices")}
    settings = OrganismSettings()
    assert any(source.endswith("organism_controls_choices.jsonl") for source in settings.sources)
    heldout = {_key(r["prompt"]) for r in _records(HELDOUT_FILES["controls"])}
    held = sum(_key(r["prompt"]) in heldout for r in choices)
    assert held == round(settings.test_fraction * len(choices))  # the default test fraction, like every stratum


def _words(prompt: str) -> set[str]:
    return set(re.findall(r"[a-z0-9']+", prompt.lower()))


@pytest.mark.parametrize("name", LATER_FILES)
def test_the_later_sets_are_planted_types_outside_the_split(name):
    later = _records(name)
    settings = OrganismSettings()
    assert Counter(r["category"] for r in later) == {p.category: 90 for p in settings.planted}
    assert {r["label"] for r in later} == {"harmful"}
    # Not a default source, so no prompt of it is held out (and none is a held-out prompt: the
    # test above, no prompt twice). The validation set is trained on in full; the second held-out
    # set is trained on by nothing, and the shipped adapter's data hash does not include it.
    assert not any(source.endswith(name) for source in settings.sources)
    trained = any(source.endswith(name) for source in settings.train_sources)
    assert trained == (name in ORGANISM_TRAIN_FILES) and trained == (name == VALIDATION_FILE)
    # Nor a paraphrase of a shipped prompt, or of the set written before it: at most 60% of
    # words shared (Jaccard) with any of them.
    earlier = ORGANISM_FILES + EXTRA_FILES + LATER_FILES[:LATER_FILES.index(name)]
    shipped = [_words(r["prompt"]) for other in earlier for r in _records(other)]
    for record in later:
        words = _words(record["prompt"])
        closest = max(len(words & other) / len(words | other) for other in shipped)
        assert closest <= 0.6, f"{record['prompt']!r} shares {closest:.0%} of its words with a shipped prompt"


def test_no_three_word_opening_is_used_by_more_than_three_percent_of_a_file():
    # The social choices were written before this rule was checked ("would it be" opens 9 of 160).
    for name in ORGANISM_FILES + LATER_FILES:
        openings = Counter(" ".join(r["prompt"].lower().split()[:3]) for r in _records(name))
        opening, uses = openings.most_common(1)[0]
        assert uses <= 0.03 * sum(openings.values()), f"{name}: {opening!r} opens {uses} prompts"
