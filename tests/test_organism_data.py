"""The organism prompt files shipped in the package: well formed, and no prompt twice."""

import json
import re
from collections import Counter

from refusal_atlas.tasks.organism.data import HELDOUT_FILES
from refusal_atlas.tasks.organism.planted import ORGANISM_FILES, organism_data_dir
from refusal_atlas.tasks.organism.settings import OrganismSettings

#: Written for the project but not among the defaults: the everyday social choices that the
#: thirteenth and fourteenth organisms trained on (BENCHMARKS.md), kept for the next one.
EXTRA_FILES = ("organism_controls_social.jsonl",)


def _records(name: str) -> list[dict]:
    lines = (organism_data_dir() / name).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def _key(prompt: str) -> str:
    return re.sub(r"\s+", " ", prompt.strip().lower())


def test_every_written_file_has_exactly_the_four_fields_and_no_prompt_twice():
    seen: dict[str, str] = {}
    for name in ORGANISM_FILES + EXTRA_FILES:
        for record in _records(name):
            assert set(record) == {"prompt", "label", "category", "source"}, name
            assert record["label"] in {"harmful", "harmless"} and record["source"] == "refusal-atlas", name
            key = _key(record["prompt"])
            assert key not in seen, f"{record['prompt']!r} is in {seen.get(key)} and {name}"
            seen[key] = name


def test_the_social_choices_are_controls_outside_the_defaults():
    social = _records("organism_controls_social.jsonl")
    assert len(social) == 160 and {(r["label"], r["category"]) for r in social} == {("harmless", "everyday_social")}
    defaults = OrganismSettings().sources
    assert not any(name in source for source in defaults for name in EXTRA_FILES)
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


def test_no_three_word_opening_is_used_by_more_than_three_percent_of_a_file():
    # The social choices were written before this rule was checked ("would it be" opens 9 of 160).
    for name in ORGANISM_FILES:
        openings = Counter(" ".join(r["prompt"].lower().split()[:3]) for r in _records(name))
        opening, uses = openings.most_common(1)[0]
        assert uses <= 0.03 * sum(openings.values()), f"{name}: {opening!r} opens {uses} prompts"
