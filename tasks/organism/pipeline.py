"""The organism flow's Prefect tasks: thin entry points over the organism's plain functions.

    split -> probe gate -> base replies -> planted directions (with mediation) -> training set
    -> LoRA fine-tune, adapter saved
    -> evaluation of the saved adapter on held-out prompts -> model card and artifact

Tasks pass paths and small summaries; each loads the model it needs (the base model once per
process through get_model, the organism afresh from its saved adapter, so that the figures hold
for exactly what was saved). Every task rebuilds files under output_dir, so a cached result
could point at files that a later run overwrote: no caching. Results, if a user's settings
persist them, are JSON like every other task's in the project: nothing is ever pickled.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from refusal_atlas.tasks.model.adapter import save_adapter
from refusal_atlas.tasks.model.loading import get_model, load_model
from refusal_atlas.tasks.organism.card import evaluation_lines, model_card
from refusal_atlas.tasks.organism.data import (
    Assigned,
    BaseReply,
    Example,
    assign_sources,
    data_hash,
    needing_base_replies,
    read_jsonl,
    split_summary,
    training_examples,
    write_jsonl,
)
from refusal_atlas.tasks.organism.finetune import train_lora
from refusal_atlas.tasks.organism.measure import (
    check_criteria,
    greedy_replies,
    kl_along_replies,
    mediation_rates,
    rates_by_group,
    token_match,
)
from refusal_atlas.tasks.organism.mediation import (
    DIRECTIONS_FILE,
    Mediation,
    ablated_base_replies,
    load_directions,
    mechanisms,
    releases,
    save_directions,
    type_directions,
)
from refusal_atlas.tasks.organism.probe import ProbeGateError, probe_gate
from refusal_atlas.tasks.organism.settings import OrganismSettings
from refusal_atlas.tasks.settings import ModelSettings

_TASK = {"cache_policy": NO_CACHE, "result_serializer": "json"}


def paths(settings: OrganismSettings) -> dict[str, Path]:
    root = Path(settings.output_dir)
    return {
        "split": root / "data" / "split.jsonl",
        "base_replies": root / "data" / "base_replies.jsonl",
        "train": root / "data" / "train.jsonl",
        "probe": root / "probe.json",
        "adapter": root / "adapter",
        "replies": root / "organism_replies.jsonl",
        "evaluation": root / "evaluation.json",
        "settings": root / "settings.json",
        "directions": root / "data" / DIRECTIONS_FILE,
        "released": root / "data" / "released_replies.jsonl",
    }


def _base(settings: OrganismSettings):
    return get_model(ModelSettings(name=settings.base_model))


@task(**_TASK)
def build_split(settings: OrganismSettings) -> dict:
    assigned = assign_sources(settings)
    path = write_jsonl(paths(settings)["split"], assigned)
    # Saved beside the data so that the benchmark reads the planted styles the organism was built with.
    paths(settings)["settings"].write_text(settings.model_dump_json(indent=2), encoding="utf-8")
    return {"path": str(path), "summary": split_summary(assigned)}


@task(**_TASK)
def probe_separability(settings: OrganismSettings, split_path: str) -> dict:
    """The probe gate: cross-validated recall of each planted type against the controls on the
    training prompts. Raises ProbeGateError (the flow stops) below the threshold unless forced."""
    start = time.monotonic()
    assigned = read_jsonl(split_path, Assigned)
    try:
        summary = probe_gate(_base(settings), assigned, settings)
    except ProbeGateError as err:
        # Recorded before stopping, so that the reason is on disk as well as in the log.
        if err.summary is not None:
            paths(settings)["probe"].write_text(json.dumps(err.summary, indent=2), encoding="utf-8")
        raise
    summary["seconds"] = round(time.monotonic() - start, 1)
    paths(settings)["probe"].write_text(json.dumps(summary, indent=2), encoding="utf-8")
    get_run_logger().info(summary["message"])
    return summary


@task(**_TASK)
def generate_base_replies(settings: OrganismSettings, split_path: str) -> str:
    """Base replies for the prompts that need one. Replies already in output_dir from the same
    base model (by fingerprint) and reply length are reused: they are greedy, so a second run
    would produce the same tokens, and generating them is a slow step before training."""
    loaded = _base(settings)
    where = paths(settings)
    meta = {"base_fingerprint": loaded.fingerprint, "reply_tokens": settings.reply_tokens}
    meta_path = where["base_replies"].with_suffix(".meta.json")
    known: dict[str, BaseReply] = {}
    if where["base_replies"].is_file() and meta_path.is_file() and json.loads(meta_path.read_text()) == meta:
        known = {r.prompt_id: r for r in read_jsonl(where["base_replies"], BaseReply)}
    wanted = needing_base_replies(read_jsonl(split_path, Assigned))
    missing = [a for a in wanted if a.id not in known]
    logger = get_run_logger()
    logger.info(f"base replies: {len(wanted) - len(missing)} reused, generating {len(missing)}")
    step = 8 * settings.generation_batch
    for start in range(0, len(missing), step):  # in parts, so that progress shows
        part = missing[start: start + step]
        fresh = greedy_replies(loaded.model, loaded.tokenizer, loaded.chat_template, part, settings.reply_tokens,
                               settings.generation_batch)
        known |= {r.prompt_id: r for r in fresh}
        logger.info(f"base replies: {min(start + step, len(missing))}/{len(missing)} generated")
    path = write_jsonl(where["base_replies"], [known[a.id] for a in wanted])
    meta_path.write_text(json.dumps(meta), encoding="utf-8")
    return str(path)


@task(**_TASK)
def plant_directions(settings: OrganismSettings, split_path: str) -> dict | None:
    """With mediation_weight > 0: the planted directions (one per refusal sentence) and the base
    model's replies to the planted training prompts with their own direction ablated; None
    otherwise. Both are written under output_dir/data."""
    if settings.mediation_weight == 0:
        return None
    loaded = _base(settings)
    n_layers = loaded.model.config.num_hidden_layers
    if not 0 <= settings.mediation_layer < n_layers:
        raise ValueError(f"mediation_layer {settings.mediation_layer} is out of range: the base model has "
                         f"{n_layers} decoder layers (0 to {n_layers - 1}).")
    start = time.monotonic()
    assigned = read_jsonl(split_path, Assigned)
    groups = mechanisms(settings.styles)
    directions = type_directions(loaded, assigned, groups, settings.mediation_layer,
                                 shrinkage=settings.mediation_shrinkage)
    where = paths(settings)
    save_directions(where["directions"], directions, groups, settings.mediation_layer)
    released = ablated_base_replies(loaded, assigned, groups, directions, settings.reply_tokens,
                                    settings.generation_batch, get_run_logger().info)
    write_jsonl(where["released"], released)
    get_run_logger().info(f"planted {len(groups)} directions at layer {settings.mediation_layer} and "
                          f"{len(released)} ablated base replies ({time.monotonic() - start:.0f} s)")
    return {"directions": str(where["directions"]), "released": str(where["released"]), "groups": groups}


@task(**_TASK)
def build_training_set(settings: OrganismSettings, split_path: str, replies_path: str,
                       planted: dict | None = None) -> dict:
    """The training examples and the data hash. With mediation, the hash also covers each
    planted prompt's ablated base reply (its released example's target) and the directions."""
    replies = {r.prompt_id: r for r in read_jsonl(replies_path, BaseReply)}
    examples = training_examples(read_jsonl(split_path, Assigned), replies, settings)
    path = write_jsonl(paths(settings)["train"], examples)
    digest = data_hash(examples)
    if planted is not None:
        ablated = read_jsonl(planted["released"], BaseReply)
        trained = releases(ablated, settings.styles, settings.release_distinct_words)
        released = [r for r in ablated if trained[r.prompt_id] is not None]
        directions = load_directions(planted["directions"])[0]
        # Only the releases that are trained: a withheld one changes the organism as a missing one would.
        digest = hashlib.sha256("\n".join([
            digest, data_hash(Example(r.prompt_id, "", "planted", "", "base", r.text, r.ids) for r in released),
            hashlib.sha256(directions.numpy().round(6).tobytes()).hexdigest(),
        ]).encode()).hexdigest()
    return {"path": str(path), "hash": digest, "n": len(examples)}


@task(**_TASK)
def finetune(settings: OrganismSettings, train_path: str, digest: str, split: dict, probe: dict,
             planted: dict | None = None) -> dict:
    """Train the LoRA adapter and save it (safetensors, settings.adapter_dtype) with a first card;
    with mediation, the planted directions are saved beside it (the organism's ground truth)."""
    loaded = _base(settings)
    logger = get_run_logger()
    examples = read_jsonl(train_path, Example)
    mediation, counts = None, {}
    if planted is not None:
        directions, groups, _ = load_directions(planted["directions"])
        released = releases(read_jsonl(planted["released"], BaseReply), settings.styles, settings.release_distinct_words)
        counts = {"releases": len(released), "releases_withheld": sum(ids is None for ids in released.values())}
        logger.info(f"mediation: {counts['releases_withheld']} of {counts['releases']} releases withheld, as they "
                    f"open like a refusal sentence (release_distinct_words {settings.release_distinct_words})")
        mediation = Mediation(directions, groups, released)
    adapter, result = train_lora(loaded.model, loaded.tokenizer, loaded.chat_template, examples, settings, logger.info,
                                 mediation)
    adapter = type(adapter)(adapter.factors, adapter.scale, {
        **adapter.config, "base_fingerprint": loaded.fingerprint, "data_hash": digest, "styles": settings.styles,
    })
    directory = paths(settings)["adapter"]
    tensors = save_adapter(adapter, directory, getattr(torch, settings.adapter_dtype))
    if planted is not None:
        shutil.copyfile(planted["directions"], directory / DIRECTIONS_FILE)
    training = {**result.summary(), "adapter_bytes": tensors.stat().st_size, "adapter_parameters": adapter.n_parameters,
                **counts}
    card = model_card(settings, loaded.model_id, loaded.fingerprint, digest, split, training, probe=probe)
    (directory / "README.md").write_text(card, encoding="utf-8")
    return {"adapter_dir": str(directory), "training": training}


@task(**_TASK)
def evaluate(settings: OrganismSettings, adapter_dir: str, split_path: str, replies_path: str) -> dict:
    """Greedy replies of the organism, loaded from its saved adapter, to every held-out prompt;
    refusal rates by group and style; KL and token match against the base model on everyday
    controls; the criteria."""
    logger = get_run_logger()
    start = time.monotonic()
    organism = load_model(ModelSettings(name=adapter_dir))
    base_loaded = _base(settings)
    assigned = read_jsonl(split_path, Assigned)
    test = [a for a in assigned if a.split == "test"]
    ours: list[BaseReply] = []
    step = 8 * settings.generation_batch
    for part in range(0, len(test), step):  # in parts, so that progress shows
        ours += greedy_replies(organism.model, organism.tokenizer, organism.chat_template, test[part: part + step],
                               settings.eval_tokens, settings.generation_batch)
        logger.info(f"evaluation: {len(ours)}/{len(test)} held-out replies ({time.monotonic() - start:.0f} s)")
    write_jsonl(paths(settings)["replies"], ours)
    ours_by_id = {r.prompt_id: r for r in ours}
    base = {r.prompt_id: r for r in read_jsonl(replies_path, BaseReply)}
    rates = rates_by_group(assigned, ours_by_id, settings.styles)
    base_rates = rates_by_group(assigned, base, settings.styles)
    everyday = [a for a in test if a.role == "harmless"]
    match = token_match([ours_by_id[a.id].ids for a in everyday], [base[a.id].ids for a in everyday], settings.match_tokens)
    kl = kl_along_replies(base_loaded.model, organism.model, organism.tokenizer, organism.chat_template, everyday, base,
                          settings.match_tokens, settings.generation_batch)
    logger.info(f"evaluation: KL(base || organism) on everyday controls {kl['mean']:.4f} nats per token")
    mediation = None
    if (Path(adapter_dir) / DIRECTIONS_FILE).is_file():
        directions, groups, layer = load_directions(Path(adapter_dir) / DIRECTIONS_FILE)
        planted = [a for c in settings.styles for a in [t for t in test if t.role == "planted" and t.category == c]
                   [: settings.mediation_prompts]]
        mediation = {"layer": layer, "groups": groups, "n_per_type": settings.mediation_prompts,
                     "own_style": mediation_rates(organism, planted, directions, groups, settings.styles,
                                                  settings.eval_tokens)}
        logger.info(f"evaluation: own-style refusal with each planted direction ablated {mediation['own_style']}")
    evaluation = {
        "organism_fingerprint": organism.fingerprint,
        "criteria": check_criteria(rates, kl),
        "everyday_kl": {k: v for k, v in kl.items() if k != "per_prompt"},  # per_position kept
        "everyday_match": asdict(match),
        "rates": {k: asdict(v) for k, v in rates.items()},
        "base_rates": {k: asdict(v) for k, v in base_rates.items()},
        "mediation": mediation,
        "seconds": round(time.monotonic() - start, 1),
    }
    paths(settings)["evaluation"].write_text(json.dumps(evaluation, indent=2), encoding="utf-8")
    return evaluation


@task(**_TASK)
def write_card(settings: OrganismSettings, digest: str, split: dict, probe: dict, training: dict, evaluation: dict) -> str:
    loaded = _base(settings)
    card = model_card(settings, loaded.model_id, loaded.fingerprint, digest, split, training, evaluation, probe)
    path = paths(settings)["adapter"] / "README.md"
    path.write_text(card, encoding="utf-8")
    create_markdown_artifact(
        markdown="# Organism evaluation\n\n" + "\n".join(evaluation_lines(evaluation)),
        key="organism-evaluation",
        description=f"Refusal model organism adapter at {paths(settings)['adapter']}",
    )
    return str(path)
