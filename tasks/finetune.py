"""Fine-tuning the organism: LoRA on a private copy of the base model, merged at the end.

Why LoRA rather than a full fine-tune: the organism must change one narrow behaviour and leave
the rest alone (harmless replies must keep >= 80% of their first tokens). A rank-8 update
moves the weights far less than full training, needs no optimiser state for the 135M base
weights, and merged into the weights it leaves an ordinary model that the atlas loads by path.

The loss is on reply tokens only, each example weighted equally (the mean over its own reply
tokens), so a long anchor reply does not outweigh a one-sentence refusal. Logits are computed
only at reply positions: the 49k-way output layer is a large share of a small model's cost.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tasks.chat import phrase_token_ids, render_text
from tasks.organism_data import Example
from tasks.organism_settings import OrganismSettings


@dataclass(frozen=True)
class Encoded:
    """One example as tokens: input_ids = prompt + reply, the reply starting at reply_start."""

    input_ids: tuple[int, ...]
    reply_start: int
    role: str


@dataclass
class TrainResult:
    """Training figures for the model card. losses: the mean example loss of each step."""

    steps: int = 0
    epochs_done: float = 0.0
    seconds: float = 0.0
    examples_seen: int = 0
    stopped_by_time: bool = False
    trainable_parameters: int = 0
    losses: list[float] = field(default_factory=list)
    epoch_role_loss: list[dict[str, float]] = field(default_factory=list)
    planted_loss_before: float = float("nan")
    planted_loss_after: float = float("nan")

    def summary(self) -> dict:
        def mean(xs: Sequence[float]) -> float:
            return round(sum(xs) / len(xs), 4) if xs else float("nan")

        k = max(1, min(10, len(self.losses) // 4))
        return {
            "steps": self.steps,
            "epochs_done": round(self.epochs_done, 3),
            "seconds": round(self.seconds, 1),
            "examples_seen": self.examples_seen,
            "stopped_by_time": self.stopped_by_time,
            "trainable_parameters": self.trainable_parameters,
            "loss_first_steps": mean(self.losses[:k]),
            "loss_last_steps": mean(self.losses[-k:]),
            "epoch_role_loss": self.epoch_role_loss,
            "planted_loss_before": round(self.planted_loss_before, 4),
            "planted_loss_after": round(self.planted_loss_after, 4),
        }


def encode(tokenizer, chat_template: str, examples: Sequence[Example]) -> list[Encoded]:
    """Tokenise prompt and reply. A refusal sentence is tokenised as the opening of the reply
    (the way the model emits it) and followed by EOS, so the organism learns to stop."""
    eos = tokenizer.eos_token_id
    out = []
    for e in examples:
        prompt = tokenizer(render_text(tokenizer, chat_template, e.text), add_special_tokens=False)["input_ids"]
        if e.reply_ids is not None:
            reply = list(e.reply_ids)
        else:
            reply = [*phrase_token_ids(tokenizer, chat_template, e.reply), eos]
        out.append(Encoded(tuple(prompt) + tuple(reply), len(prompt), e.role))
    return out


def _batch(items: Sequence[Encoded], pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask [B, T], and the target mask [B, T-1]: True where
    position t predicts a reply token t+1."""
    width = max(len(e.input_ids) for e in items)
    ids = torch.full((len(items), width), pad, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    target = torch.zeros((len(items), width - 1), dtype=torch.bool)
    for r, e in enumerate(items):
        n = len(e.input_ids)
        ids[r, :n] = torch.tensor(e.input_ids)
        mask[r, :n] = 1
        target[r, e.reply_start - 1: n - 1] = True
    return ids, mask, target


def example_losses(model, items: Sequence[Encoded], pad: int) -> torch.Tensor:
    """Mean cross-entropy over each example's reply tokens [B]."""
    ids, mask, target = _batch(items, pad)
    device = next(model.parameters()).device
    ids, mask, target = ids.to(device), mask.to(device), target.to(device)
    hidden = model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state  # [B, T, D]
    rows, cols = target.nonzero(as_tuple=True)
    logits = model.get_output_embeddings()(hidden[rows, cols]).float()  # [n_reply_tokens, V]
    token_loss = torch.nn.functional.cross_entropy(logits, ids[rows, cols + 1], reduction="none")
    per_row = torch.zeros(len(items), device=device).index_add(0, rows, token_loss)
    return per_row / target.sum(dim=1).clamp_min(1)


@torch.no_grad()
def mean_loss(model, items: Sequence[Encoded], pad: int, batch_size: int = 16) -> float:
    if not items:
        return float("nan")
    total = sum(example_losses(model, items[i: i + batch_size], pad).sum().item() for i in range(0, len(items), batch_size))
    return total / len(items)


def length_batches(lengths: Sequence[int], batch_size: int, rng: torch.Generator) -> list[list[int]]:
    """A seeded epoch of batches of similar lengths: shuffle, sort each run of 8 batches' worth
    by length, cut into batches, shuffle the batches. Less padding, still a random order."""
    order = torch.randperm(len(lengths), generator=rng).tolist()
    pool = 8 * batch_size
    batches = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start: start + pool], key=lambda i: lengths[i])
        batches += [chunk[i: i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=rng).tolist()]


def _lr_factor(step: int, total: int) -> float:
    """Linear warm-up over the first 5% of steps, then linear decay to 10% of the rate."""
    warm = max(1, total // 20)
    if step < warm:
        return (step + 1) / warm
    return max(0.1, 1.0 - 0.9 * (step - warm) / max(1, total - warm))


def train_lora(
    base_model: torch.nn.Module,
    tokenizer,
    chat_template: str,
    examples: Sequence[Example],
    settings: OrganismSettings,
    log: Callable[[str], None] = print,
) -> tuple[torch.nn.Module, TrainResult]:
    """LoRA-fine-tune a deep copy of `base_model` and return the merged copy and its figures.

    The caller's model is never touched: it may be the process-wide model other tasks share.
    """
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(settings.train_seed)
    model = copy.deepcopy(base_model).requires_grad_(False)
    config = LoraConfig(
        r=settings.lora_rank, lora_alpha=settings.lora_alpha, lora_dropout=0.0,
        target_modules=list(settings.target_modules), bias="none",
    )
    peft_model = get_peft_model(model, config)
    peft_model.train()
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(trainable, lr=settings.learning_rate, weight_decay=0.0)

    pad = next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)
    encoded = encode(tokenizer, chat_template, examples)
    planted = [e for e in encoded if e.role == "planted"]
    harmful = [e for e in encoded if e.role != "harmless"]
    epoch_items = encoded + harmful * (settings.harmful_repeats - 1)
    per_epoch = -(-len(epoch_items) // settings.batch_size)
    total = per_epoch * settings.epochs
    result = TrainResult(trainable_parameters=sum(p.numel() for p in trainable))
    result.planted_loss_before = mean_loss(peft_model, planted, pad)

    device_type = next(peft_model.parameters()).device.type
    order_rng = torch.Generator().manual_seed(settings.train_seed)
    start = time.monotonic()
    for epoch in range(settings.epochs):
        batches = length_batches([len(e.input_ids) for e in epoch_items], settings.batch_size, order_rng)
        role_sums: dict[str, list[float]] = {}
        for indices in batches:
            items = [epoch_items[i] for i in indices]
            for group in optimiser.param_groups:
                group["lr"] = settings.learning_rate * _lr_factor(result.steps, total)
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=settings.train_dtype == "bfloat16"):
                losses = example_losses(peft_model, items, pad)
            losses.mean().backward()
            optimiser.step()
            optimiser.zero_grad(set_to_none=True)
            result.steps += 1
            result.examples_seen += len(items)
            result.losses.append(float(losses.mean().detach()))
            for item, loss in zip(items, losses.tolist()):
                role_sums.setdefault(item.role, []).append(loss)
            if result.steps % 20 == 0:
                log(f"step {result.steps}/{total}: loss {result.losses[-1]:.4f} ({time.monotonic() - start:.0f} s)")
            if time.monotonic() - start > settings.max_minutes * 60:
                result.stopped_by_time = True
                break
        result.epoch_role_loss.append({r: round(sum(v) / len(v), 4) for r, v in sorted(role_sums.items())})
        if result.stopped_by_time:
            log(f"stopped after {settings.max_minutes} minutes, in epoch {epoch + 1}")
            break
    result.seconds = time.monotonic() - start
    result.epochs_done = result.steps / per_epoch
    peft_model.eval()
    result.planted_loss_after = mean_loss(peft_model, planted, pad)
    merged = peft_model.merge_and_unload()
    merged.eval().requires_grad_(False)
    return merged, result


def plain_model(model: torch.nn.Module) -> torch.nn.Module:
    """The same weights in a model built from a config without quantisation settings.

    A model loaded from a GGUF file keeps its quantiser and `quantization_config` although its
    weights were dequantised to float tensors, and transformers refuses to save such a model.
    A fresh model of the same class, with the config's quantisation entry dropped, holds the
    same float weights and saves as an ordinary checkpoint.
    """
    if getattr(model, "hf_quantizer", None) is None and getattr(model.config, "quantization_config", None) is None:
        return model
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    dtype = next(model.parameters()).dtype
    fresh = type(model)(config).to(dtype)
    missing, unexpected = fresh.load_state_dict(model.state_dict(), strict=False)
    # Tied output weights may be absent from the state dict; anything else is a real mismatch.
    real = [k for k in missing if not (config.tie_word_embeddings and k.endswith("lm_head.weight"))]
    if real or unexpected:
        raise RuntimeError(f"could not copy the weights into a plain model: missing {real}, unexpected {unexpected}")
    fresh.generation_config = copy.deepcopy(model.generation_config)
    return fresh.eval().requires_grad_(False)


def save_model_dir(model: torch.nn.Module, tokenizer, chat_template: str, directory: Path | str, card: str) -> Path:
    """An ordinary Hugging Face model directory: weights, config, tokenizer, chat template, card.

    The tokenizer is copied before its template is set, so a shared tokenizer is not changed.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    plain_model(model).save_pretrained(directory)
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(directory)
    (directory / "README.md").write_text(card, encoding="utf-8")
    return directory


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
        f"Unplanted categories trained on the base model's own replies: {', '.join(settings.trained_controls) or 'none'}. "
        "Every other unplanted category was never trained on.",
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
        f"(5% linear warm-up, linear decay to 10%), matmuls in {settings.train_dtype}, loss on reply tokens only",
        f"- train seed {settings.train_seed}; batch size {settings.batch_size}; epochs {settings.epochs}; "
        f"planted and trained-control examples repeated {settings.harmful_repeats}x per epoch",
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
