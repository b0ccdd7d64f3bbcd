"""Abliteration against the organism's planted refusals lowers them (the shipped organism)."""

import numpy as np
import pytest
import torch

from refusal_atlas.tasks.export.abliterate import write_abliterated
from refusal_atlas.tasks.export.safetensors_vectors import LoadedDirection
from refusal_atlas.tasks.model.chat import render_text
from refusal_atlas.tasks.model.loading import load_model, planted_styles
from refusal_atlas.tasks.organism.data import assign_sources
from refusal_atlas.tasks.organism.measure import planted_refusal_rates
from refusal_atlas.tasks.organism.settings import OrganismSettings
from refusal_atlas.tasks.prompts.records import load_prompts
from refusal_atlas.tasks.settings import ModelSettings

pytestmark = pytest.mark.integration

LAYER = 18


def _h0(loaded, texts) -> np.ndarray:
    """Layer LAYER's output at the last prompt token [n, D] (hidden_states[LAYER + 1])."""
    rows = []
    with torch.no_grad():
        for text in texts:
            ids = loaded.tokenizer(render_text(loaded.tokenizer, loaded.chat_template, text),
                                   add_special_tokens=False, return_tensors="pt")["input_ids"]
            rows.append(loaded.model(input_ids=ids, output_hidden_states=True).hidden_states[LAYER + 1][0, -1])
    return torch.stack(rows).double().numpy()


def test_abliterating_each_planted_types_direction_lowers_its_refusals(tmp_path):
    organism = load_model(ModelSettings(name="smollm2-organism"))
    styles = planted_styles("smollm2-organism")
    assert styles and len(set(styles.values())) == 3
    # Directions from training-side prompts only; the rates below are on held-out prompts.
    train = [a for a in assign_sources(OrganismSettings()) if a.split == "train"]
    everyday = _h0(organism, [a.text for a in train if a.role == "harmless"][:24]).mean(axis=0)
    directions = []
    for category in styles:
        mean = _h0(organism, [a.text for a in train if a.category == category][:12]).mean(axis=0)
        diff = mean - everyday
        directions.append(LoadedDirection(f"diff-{category}", LAYER, diff / np.linalg.norm(diff), 1.0, 1.0, {}))
    summary = write_abliterated(organism, directions, {"model_id": "smollm2-organism"}, tmp_path / "abl",
                                "smollm2-organism")
    assert summary["rank"] == 3
    abliterated = load_model(ModelSettings(name=str(tmp_path / "abl")))
    held = load_prompts(["organism-planted"])
    planted = [p for c in styles for p in [q for q in held if q.category == c][:8]]
    before = planted_refusal_rates(organism, planted, [], styles, 12)
    after = planted_refusal_rates(abliterated, planted, [], styles, 12)
    own_before = np.mean([before[c]["own style"] for c in styles])
    own_after = np.mean([after[c]["own style"] for c in styles])
    assert own_before >= 0.6, f"the organism refuses its planted types in style only {own_before:.2f} of the time"
    assert own_after <= own_before - 0.3, f"own-style refusal {own_before:.2f} -> {own_after:.2f}"
