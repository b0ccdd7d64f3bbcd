"""The `organism` flow: build a refusal model organism and measure it.

    build the split -> base model's greedy replies -> training set -> LoRA fine-tune and save
    -> evaluate on held-out prompts -> model card and artifact

Wiring only: the work is in tasks.organism_data, tasks.finetune and tasks.organism_eval. Tasks
pass paths and small summaries; each loads the model it needs (the base model once per process
through tasks.models.get_model, the organism afresh from its directory).

Run it as `refusal-atlas organism` (flows.organism_cli holds its flags, apart from this module so
that building the CLI's parser imports neither torch nor the training code).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from refusal_atlas.tasks.organism.finetune import save_model_dir, train_lora
from refusal_atlas.tasks.organism.card import evaluation_lines, model_card
from refusal_atlas.tasks.model.loading import get_model, load_model
from refusal_atlas.tasks.organism.data import (
    Assigned,
    BaseReply,
    Example,
    assign,
    data_hash,
    needing_base_replies,
    read_jsonl,
    split_summary,
    training_examples,
    write_jsonl,
)
from refusal_atlas.tasks.organism.measure import check_criteria, greedy_replies, rates_by_group, token_match
from refusal_atlas.tasks.organism.settings import OrganismSettings
from refusal_atlas.tasks.prompts.records import load_prompts
from refusal_atlas.tasks.settings import ModelSettings

# Every task rebuilds files under output_dir, so a cached result could point at files that a
# later run overwrote: no caching. Results, if a user's settings persist them, are JSON like
# every other task's in the project: nothing is ever pickled.
_TASK = {"cache_policy": NO_CACHE, "result_serializer": "json"}


def _paths(settings: OrganismSettings) -> dict[str, Path]:
    root = Path(settings.output_dir)
    return {
        "split": root / "data" / "split.jsonl",
        "base_replies": root / "data" / "base_replies.jsonl",
        "train": root / "data" / "train.jsonl",
        "model": root / "model",
        "replies": root / "organism_replies.jsonl",
        "evaluation": root / "evaluation.json",
        "settings": root / "settings.json",
    }


@task(**_TASK)
def build_split(settings: OrganismSettings) -> dict:
    assigned = assign(load_prompts(settings.sources), settings)
    path = write_jsonl(_paths(settings)["split"], assigned)
    # Saved beside the data so that the benchmark reads the planted styles the organism was built with.
    _paths(settings)["settings"].write_text(settings.model_dump_json(indent=2), encoding="utf-8")
    return {"path": str(path), "summary": split_summary(assigned)}


@task(**_TASK)
def generate_base_replies(settings: OrganismSettings, split_path: str) -> str:
    """Base replies for the prompts that need one. Replies already in output_dir from the same
    base model (by fingerprint) and reply length are reused: they are greedy, so a second run
    would produce the same tokens, and generating them is the slowest step before training."""
    loaded = get_model(ModelSettings(name=settings.base_model))
    paths = _paths(settings)
    meta = {"base_fingerprint": loaded.fingerprint, "reply_tokens": settings.reply_tokens}
    meta_path = paths["base_replies"].with_suffix(".meta.json")
    known: dict[str, BaseReply] = {}
    if paths["base_replies"].is_file() and meta_path.is_file() and json.loads(meta_path.read_text()) == meta:
        known = {r.prompt_id: r for r in read_jsonl(paths["base_replies"], BaseReply)}
    wanted = needing_base_replies(read_jsonl(split_path, Assigned))
    missing = [a for a in wanted if a.id not in known]
    get_run_logger().info(f"base replies: {len(wanted) - len(missing)} reused, generating {len(missing)}")
    fresh = greedy_replies(
        loaded.model, loaded.tokenizer, loaded.chat_template, missing, settings.reply_tokens, settings.generation_batch
    )
    known |= {r.prompt_id: r for r in fresh}
    path = write_jsonl(paths["base_replies"], [known[a.id] for a in wanted])
    meta_path.write_text(json.dumps(meta), encoding="utf-8")
    return str(path)


@task(**_TASK)
def build_training_set(settings: OrganismSettings, split_path: str, replies_path: str) -> dict:
    replies = {r.prompt_id: r for r in read_jsonl(replies_path, BaseReply)}
    examples = training_examples(read_jsonl(split_path, Assigned), replies, settings)
    path = write_jsonl(_paths(settings)["train"], examples)
    return {"path": str(path), "hash": data_hash(examples), "n": len(examples)}


@task(**_TASK)
def finetune(settings: OrganismSettings, train_path: str, digest: str, split: dict) -> dict:
    loaded = get_model(ModelSettings(name=settings.base_model))
    logger = get_run_logger()
    examples = read_jsonl(train_path, Example)
    merged, result = train_lora(loaded.model, loaded.tokenizer, loaded.chat_template, examples, settings, logger.info)
    training = result.summary()
    card = model_card(settings, loaded.model_id, loaded.fingerprint, digest, split, training)
    directory = save_model_dir(merged, loaded.tokenizer, loaded.chat_template, _paths(settings)["model"], card)
    return {"model_dir": str(directory), "training": training}


@task(**_TASK)
def evaluate(settings: OrganismSettings, model_dir: str, split_path: str, replies_path: str) -> dict:
    organism = load_model(ModelSettings(name=model_dir))
    assigned = read_jsonl(split_path, Assigned)
    test = [a for a in assigned if a.split == "test"]
    ours = greedy_replies(
        organism.model, organism.tokenizer, organism.chat_template, test, settings.eval_tokens, settings.generation_batch
    )
    write_jsonl(_paths(settings)["replies"], ours)
    ours_by_id = {r.prompt_id: r for r in ours}
    base = {r.prompt_id: r for r in read_jsonl(replies_path, BaseReply)}
    rates = rates_by_group(assigned, ours_by_id, settings.styles)
    base_rates = rates_by_group(assigned, base, settings.styles)
    harmless = [a.id for a in test if a.role == "harmless"]
    match = token_match([ours_by_id[i].ids for i in harmless], [base[i].ids for i in harmless], settings.match_tokens)
    evaluation = {
        "organism_fingerprint": organism.fingerprint,
        "criteria": check_criteria(rates, match),
        "harmless_match": asdict(match),
        "rates": {k: asdict(v) for k, v in rates.items()},
        "base_rates": {k: asdict(v) for k, v in base_rates.items()},
    }
    _paths(settings)["evaluation"].write_text(json.dumps(evaluation, indent=2), encoding="utf-8")
    return evaluation


@task(**_TASK)
def write_card(settings: OrganismSettings, base_fingerprint: str, digest: str, split: dict, training: dict, evaluation: dict) -> str:
    loaded = get_model(ModelSettings(name=settings.base_model))
    card = model_card(settings, loaded.model_id, base_fingerprint, digest, split, training, evaluation)
    path = _paths(settings)["model"] / "README.md"
    path.write_text(card, encoding="utf-8")
    create_markdown_artifact(
        markdown="# Organism evaluation\n\n" + "\n".join(evaluation_lines(evaluation)),
        key="organism-evaluation",
        description=f"Refusal model organism at {_paths(settings)['model']}",
    )
    return str(path)


@flow(name="organism", log_prints=True)
def organism(settings: OrganismSettings = OrganismSettings()) -> dict:  # noqa: B008 - frozen, so immutable
    """Build, train, save and evaluate a refusal model organism; returns its summary."""
    split = build_split(settings)
    replies_path = generate_base_replies(settings, split["path"])
    data = build_training_set(settings, split["path"], replies_path)
    trained = finetune(settings, data["path"], data["hash"], split["summary"])
    evaluation = evaluate(settings, trained["model_dir"], split["path"], replies_path)
    base_fingerprint = get_model(ModelSettings(name=settings.base_model)).fingerprint
    write_card(settings, base_fingerprint, data["hash"], split["summary"], trained["training"], evaluation)
    return {
        "model_dir": trained["model_dir"],
        "data_hash": data["hash"],
        "training": trained["training"],
        "criteria": evaluation["criteria"],
    }
