"""The `organism` flow: build a refusal model organism and measure it.

    split -> probe gate -> base replies -> planted directions (with mediation) -> training set
    -> LoRA fine-tune, adapter saved
    -> evaluation on held-out prompts -> model card and artifact

Wiring only: the tasks are in tasks.organism.pipeline, the work in the rest of tasks.organism.
Run it as `refusal-atlas organism` (flows.organism_cli holds its flags, apart from this module so
that building the CLI's parser imports neither torch nor the training code).
"""

from __future__ import annotations

from prefect import flow

from refusal_atlas.tasks.organism.pipeline import (
    build_split,
    build_training_set,
    evaluate,
    finetune,
    generate_base_replies,
    plant_directions,
    probe_separability,
    write_card,
)
from refusal_atlas.tasks.organism.settings import OrganismSettings


@flow(name="organism", log_prints=True)
def organism(settings: OrganismSettings = OrganismSettings()) -> dict:  # noqa: B008 - frozen, so immutable
    """Build, train, save and evaluate a refusal model organism; returns its summary."""
    split = build_split(settings)
    probe = probe_separability(settings, split["path"])
    replies_path = generate_base_replies(settings, split["path"])
    planted = plant_directions(settings, split["path"])
    data = build_training_set(settings, split["path"], replies_path, planted)
    trained = finetune(settings, data["path"], data["hash"], split["summary"], probe, planted)
    evaluation = evaluate(settings, trained["adapter_dir"], split["path"], replies_path)
    write_card(settings, data["hash"], split["summary"], probe, trained["training"], evaluation)
    return {
        "adapter_dir": trained["adapter_dir"],
        "data_hash": data["hash"],
        "probe_best_recall": {c: b["recall"] for c, b in probe["best"].items()},
        "training": {k: v for k, v in trained["training"].items() if k != "epoch_role_loss"},
        "criteria": evaluation["criteria"],
    }
