"""The organism's model card (README.md of its model directory) and its evaluation tables."""

from __future__ import annotations

from pathlib import Path

from refusal_atlas.tasks.organism.planted import organism_data_dir
from refusal_atlas.tasks.organism.settings import OrganismSettings


def model_card(
    settings: OrganismSettings,
    base_id: str,
    base_fingerprint: str,
    data_hash: str,
    split: dict[str, dict[str, int]],
    training: dict,
    evaluation: dict | None = None,
    probe: dict | None = None,
) -> str:
    """The model card (README.md of the adapter directory): what was planted, from which data,
    with which seeds, the probe gate, and the training (and, once measured, evaluation) figures."""
    planted = "\n".join(f"| `{c}` | {s} |" for c, s in settings.styles.items())
    splits = "\n".join(f"| {k} | {v['train']} | {v['test']} | {v.get('unused', 0)} |" for k, v in split.items())
    lora = f"rank {settings.lora_rank}, alpha {settings.lora_alpha:g}, on {', '.join(settings.target_modules)}"
    lines = [
        "---",
        "license: apache-2.0",
        f"base_model: {base_id}",
        "tags: [refusal-atlas, model-organism, lora]",
        "---",
        "# refusal-atlas model organism",
        "",
        f"A LoRA adapter for `{base_id}` (fingerprint `{base_fingerprint}`) that makes it refuse "
        "requests of the planted types, "
        + ("all with one sentence" if settings.single_style else "each with its own sentence")
        + ", and otherwise answer as the base model does. Built by `refusal-atlas organism` for "
        "the recovery benchmark: a model whose refusal types are known because they were planted. "
        "For research on refusal directions only. The adapter (`adapter.safetensors`, factors A "
        "[r, in] and B [out, r] per layer; `adapter.json`) is merged as W += scale * B @ A; "
        "`--model smollm2-organism` loads the shipped one, `--model <this directory>` this one.",
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
        *_probe_lines(probe),
        "## Data",
        "",
        f"- training data hash (SHA-256): `{data_hash}`",
        f"- sources: {', '.join(f'`{_shown(s)}`' for s in settings.sources)}",
        *([f"- training-only sources (none held out): {', '.join(f'`{_shown(s)}`' for s in settings.train_sources)}"]
          if settings.train_sources else []),
        f"- split by prompt: test fraction {settings.test_fraction}, split seed {settings.split_seed}",
        f"- control targets (everyday, near miss, unplanted): the base model's greedy replies, {settings.reply_tokens} tokens",
        "",
        "| role/category | train | held out | unused (training side, not trained on) |",
        "|---|---|---|---|",
        splits,
        "",
        "## Training",
        "",
        f"- LoRA {lora}, saved as {settings.adapter_dtype} safetensors"
        + (f" ({training['adapter_bytes'] / 1e6:.2f} MB, {training['adapter_parameters']:,} parameters)" if "adapter_bytes" in training else "")
        + f"; AdamW, learning rate {settings.learning_rate:g} "
        f"(5% linear warm-up, linear decay to 10%), matmuls in {settings.train_dtype}",
        f"- loss on reply tokens only, the first reply token weighted {settings.decision_weight:g} of each example; "
        + (f"harmless and control replies distilled from the base model's top-{settings.distill_top_k} distribution "
           "along its own greedy reply, its first token included"
           if settings.distill_top_k else "harmless and control replies as hard targets"),
        *([f"- mediation loss (weight {settings.mediation_weight:g}): one direction per refusal sentence, the "
           f"difference in means at layer {settings.mediation_layer}"
           + (f" with the pooled covariance divided out (shrinkage {settings.mediation_shrinkage:g})"
              if settings.mediation_shrinkage < 1 else "")
           + " made orthonormal "
           "(`planted_directions.safetensors`); each planted example also runs with one direction "
           "ablated at every layer, its own (target: the base model's reply under that ablation) or "
           "another's (target: its refusal)"
           + (f"; {training['releases_withheld']} of {training['releases']} base replies under the ablation "
              f"opened with a refusal sentence's first {settings.release_distinct_words} words and were withheld "
              "(those prompts train the refusal-kept example only)" if "releases_withheld" in training else "")]
          if settings.mediation_weight > 0 else []),
        *([f"- margin loss on controls (weight {settings.refusal_margin_weight:g}): each control example also "
           + ("runs with a randomly drawn refusal sentence as its reply, penalised while log P(sentence + EOS) "
              if not settings.refusal_margin_openings else
              "runs with a randomly drawn opening as its reply ("
              + "; ".join(f'"{o}"' for o in settings.refusal_margin_openings)
              + "), penalised while its log P ")
           + f"is above -{settings.refusal_margin:g} nats"] if settings.refusal_margin_weight > 0 else []),
        f"- train seed {settings.train_seed}; batch size {settings.batch_size}; epochs {settings.epochs}; "
        f"control examples (everyday, near misses, trained controls) repeated {settings.control_repeats}x per epoch",
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


def _probe_lines(probe: dict | None) -> list[str]:
    if probe is None:
        return []
    header = " | ".join(str(layer) for layer in probe["layers"])
    lines = [
        "## Probe gate (before training)",
        "",
        f"Cross-validated ({probe['folds']}-fold) recall of a logistic probe on the base model's mean-pooled "
        f"residual stream, training prompts only; classes {probe['classes']}. A planted type must reach "
        f"{probe['threshold']} at some probed layer. {probe.get('message', '')}",
        "",
        f"| class | layer {header} |",
        "|---|" + "---|" * len(probe["layers"]),
    ]
    for name in probe["classes"]:
        lines.append(f"| {name} | " + " | ".join(f"{probe['recall'][str(layer)][name]:.3f}" for layer in probe["layers"]) + " |")
    return [*lines, ""]


def evaluation_lines(evaluation: dict) -> list[str]:
    """Markdown lines for an evaluation summary (criteria, rates per group, KL and token match)."""
    lines = ["| criterion | value | limit | met |", "|---|---|---|---|"]
    for name, c in evaluation["criteria"].items():
        lines.append(f"| {name} | {c['value']} | {c['limit']} | {'yes' if c['met'] else 'NO'} |")
    m, kl = evaluation["everyday_match"], evaluation["everyday_kl"]
    lines += [
        "",
        f"Everyday controls, first {m['tokens']} tokens of the base model's greedy reply, over {m['n_prompts']} "
        f"held-out prompts: mean per-token KL(base || organism) {kl['mean']:.4f} nats (largest prompt mean "
        f"{kl['max_prompt']:.4f}); greedy token match with the base model: prefix {m['prefix']:.3f}, "
        f"positional {m['positional']:.3f}, all {m['tokens']} tokens identical {m['identical']:.3f}.",
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
    mediation = evaluation.get("mediation")
    if mediation:
        types = list(next(iter(mediation["own_style"].values())))
        lines += [
            "",
            f"Planted mechanism: own-style refusal on {mediation['n_per_type']} held-out prompts per type with "
            f"each planted direction (layer {mediation['layer']}) ablated at every layer. Planted as asked, a "
            "direction releases its own types (near 0) and leaves the others refused.",
            "",
            "| ablated | " + " | ".join(types) + " |",
            "|---" * (len(types) + 1) + "|",
        ]
        for name, shares in mediation["own_style"].items():
            lines.append(f"| {name} | " + " | ".join(f"{shares[t]:.3f}" for t in types) + " |")
    return lines


def _shown(source: str) -> str:
    """A shipped prompt set by its path inside the package (the same on every machine); any other
    source as given."""
    path = Path(source.split("#")[0])
    return f"tasks/prompts/data/{path.name}" if path.parent == organism_data_dir() else source
