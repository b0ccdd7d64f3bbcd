"""The shipped held-out prompt files are the default organism split's test side, exactly."""

import json

from refusal_atlas.tasks.organism.data import HELDOUT_FILES, assign_sources, heldout_records
from refusal_atlas.tasks.organism.planted import organism_data_dir
from refusal_atlas.tasks.organism.settings import OrganismSettings
from refusal_atlas.tasks.prompts.records import load_prompts


def test_shipped_heldout_files_are_the_default_splits_test_side():
    settings = OrganismSettings()
    assigned = assign_sources(settings)
    expected = heldout_records(assigned)
    trained = {a.text for a in assigned if a.split == "train"}
    for kind, name in HELDOUT_FILES.items():
        lines = (organism_data_dir() / name).read_text(encoding="utf-8").splitlines()
        shipped = [json.loads(line) for line in lines]
        assert shipped == expected[kind], f"{name} differs from the split; regenerate it with heldout_records"
        assert not trained & {r["prompt"] for r in shipped}  # nothing the organism trained on
    assert {r["category"] for r in expected["planted"]} == {p.category for p in settings.planted}
    assert len(expected["planted"]) >= 3 * 60 and len(expected["controls"]) >= 150


def test_the_shipped_source_names_read_those_files():
    from refusal_atlas.tasks.prompts.sources import parse_source

    for name, file in (("organism-planted", HELDOUT_FILES["planted"]), ("organism-controls", HELDOUT_FILES["controls"])):
        assert parse_source(f"{name}#limit=5").resolved_path() == str(organism_data_dir() / file)
    planted = load_prompts(["organism-planted#limit=30&seed=1"])
    assert len(planted) == 30 and {p.label for p in planted} == {"harmful"}
    validation = {p.text for p in load_prompts(["organism-validation"])}
    assert len(validation) == 270 and not validation & {p.text for p in load_prompts(["organism-planted"])}
    fresh = {p.text for p in load_prompts(["organism-fresh"])}
    assert len(fresh) == 270 and not fresh & (validation | {p.text for p in load_prompts(["organism-planted"])})
