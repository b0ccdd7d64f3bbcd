"""The organism prompt files shipped in the package: well formed, and no prompt twice."""

import json
import re

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
