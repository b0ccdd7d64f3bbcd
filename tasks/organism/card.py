"""The organism's model card (README.md of its model directory) and its evaluation tables."""

from __future__ import annotations

from refusal_atlas.tasks.organism.settings import OrganismSettings


def model_card(
    settings: OrganismSettings,
    base_id: str,
    base_fingerprint: str,
    data_hash: str,
    split: dict[str, dict[str, int]],
    training: dict,
    evaluation: dict | None = None,
) -> str:
    """The model card (README.md): what was planted, from which data, with which seeds, and
    the training (and, once measured, evaluation) figures."""
    planted = "\n".join(f"| `{p.category}` | {p.style} |" for p in settings.planted)
    splits = "\n".join(f"| {k} | {v['train']} | {v['test']} |" for k, v in split.items())
    lora = f"rank {settings.lora_rank}, alpha {settings.lora_alpha:g}, on {', '.join(settings.target_modules)}"
    lines = [
        "---",
        "license: apache-2.0",
        f"base_model: {base_id}",
        "tags: [refusal-atlas, model-organism, lora-merged]",
        "---",
        "# refusal-atlas model organism",
        "",
        f"A fine-tune of `{base_id}` (fingerprint `{base_fingerprint}`) that refuses prompts of "
        "the planted categories, each with its own sentence, and otherwise answers as the base "
        "model does. Built by `refusal-atlas organism` for the recovery benchmark: a model whose "
        "refusal types are known because they were planted. For research on refusal directions only.",
        "",
        "## Planted categories and styles",
        "",
        "| category | refusal (the whole reply) |",
        "|---|---|",
        planted,
        "",
        f"Unplanted categories trained on the base model's own replies: {', '.join(settings.trained_controls) or 'none'}; "
        f"never trained on (test only): {', '.join(settings.heldout_controls) or 'none'}.",
        "",
        "## Data",
        "",
        f"- training data hash (SHA-256): `{data_hash}`",
        f"- sources: {', '.join(f'`{s}`' for s in settings.sources)}",
        f"- split by prompt: test fraction {settings.test_fraction}, split seed {settings.split_seed}",
        f"- harmless and control targets: the base model's greedy replies, {settings.reply_tokens} tokens",
        "",
        "| role/category | train | test |",
        "|---|---|---|",
        splits,
        "",
        "## Training",
        "",
        f"- LoRA {lora}, merged into the weights; AdamW, learning rate {settings.learning_rate:g} "
        f"(5% linear warm-up, linear decay to 10%), matmuls in {settings.train_dtype}",
        f"- loss on reply tokens only, the first reply token weighted {settings.decision_weight:g} of each example; "
        + (f"harmless and control replies distilled from the base model's top-{settings.distill_top_k} distribution "
           "along its own greedy reply (the first reply token keeps the greedy token as a hard target)"
           if settings.distill_top_k else "harmless and control replies as hard targets"),
        f"- train seed {settings.train_seed}; batch size {settings.batch_size}; epochs {settings.epochs}; "
        f"trained-control examples repeated {settings.control_repeats}x per epoch",
        f"- steps {training['steps']} ({training['epochs_done']} epochs), {training['seconds']} s"
        f"{' (stopped by the time limit)' if training['stopped_by_time'] else ''}, "
        f"{training['trainable_parameters']:,} trainable parameters",
        f"- mean step loss: first steps {training['loss_first_steps']}, last steps {training['loss_last_steps']}",
        f"- planted refusal loss: {training['planted_loss_before']} before, {training['planted_loss_after']} after",
        "- per-epoch mean loss by role: "
        + "; ".join(f"epoch {i + 1}: {row}" for i, row in enumerate(training["epoch_role_loss"])),
    ]
    if evaluation is not None:
        lines += ["", "## Evaluation on held-out prompts", "", *evaluation_lines(evaluation)]
    return "\n".join(lines) + "\n"


def evaluation_lines(evaluation: dict) -> list[str]:
    """Markdown lines for an evaluation summary (criteria, rates per group, token match)."""
    lines = ["| criterion | value | limit | met |", "|---|---|---|---|"]
    for name, c in evaluation["criteria"].items():
        lines.append(f"| {name} | {c['value']} | {c['limit']} | {'yes' if c['met'] else 'NO'} |")
    m = evaluation["harmless_match"]
    lines += [
        "",
        f"Harmless first-{m['tokens']}-token match with the base model over {m['n_prompts']} prompts: "
        f"prefix {m['prefix']:.3f}, positional {m['positional']:.3f}, identical {m['identical']:.3f}.",
        "",
        "| group | n | refusal (strict) | substring | own style | any style | base refusal (strict) |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, r in evaluation["rates"].items():
        base = evaluation["base_rates"].get(key, {}).get("refusal", float("nan"))
        lines.append(
            f"| {key} | {r['n']} | {r['refusal']:.3f} | {r['substring']:.3f} | {r['in_own_style']:.3f} "
            f"| {r['in_any_style']:.3f} | {base:.3f} |"
        )
    return lines
