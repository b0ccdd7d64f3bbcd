"""Fine-tuning the organism: LoRA on a private copy of the base model, returned as an adapter.

Why LoRA rather than a full fine-tune: the organism must change one narrow behaviour and leave
the rest alone (controls must be answered as the base model answers them). A rank-8 update
moves the weights far less than full training, needs no optimiser state for the 135M base
weights, and its factors are small enough to ship (tasks.model.adapter merges them at load
time without peft; peft is needed for training only).

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

from refusal_atlas.tasks.model.adapter import Adapter
from refusal_atlas.tasks.model.chat import pad_id
from refusal_atlas.tasks.model.hooks import ablate_direction
from refusal_atlas.tasks.organism.data import Example
from refusal_atlas.tasks.organism.losses import encode, example_losses, mean_loss, with_soft_targets
from refusal_atlas.tasks.organism.margin import margin_losses, sentence_ids, with_sentences
from refusal_atlas.tasks.organism.mediation import Mediation, MediationPair, draw, mediation_pairs, per_row_directions
from refusal_atlas.tasks.organism.settings import OrganismSettings

#: The roles whose examples anchor the base model's behaviour: repeated each epoch, and (with the
#: margin loss) held away from the refusal sentences.
CONTROL_ROLES = ("harmless", "trained_control", "near_miss")


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
    mediation: Mediation | None = None,
) -> tuple[Adapter, TrainResult]:
    """LoRA-fine-tune a deep copy of `base_model` and return the adapter and its figures.

    The caller's model is never touched: it may be the process-wide model other tasks share.
    mediation: with settings.mediation_weight > 0, the planted directions and ablated base
    replies of tasks.organism.mediation; each step then adds, for every planted example in the
    batch, one pass with a drawn group's direction ablated (weighted by mediation_weight).
    With settings.refusal_margin_weight > 0, each control example in a batch also runs with a
    drawn refusal sentence as its reply, under tasks.organism.margin's hinge.
    """
    from peft import LoraConfig, get_peft_model

    # The clock covers the whole fine-tune, the teacher's distributions included, so that the
    # time limit bounds what a user waits for.
    start = time.monotonic()
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

    pad = pad_id(tokenizer)
    encoded = encode(tokenizer, chat_template, examples)
    if settings.distill_top_k > 0:
        anchors = [i for i, e in enumerate(examples) if e.target == "base"]
        soft = with_soft_targets(base_model, [encoded[i] for i in anchors], pad, settings.distill_top_k)
        for i, item in zip(anchors, soft):
            encoded[i] = item
    planted = [e for e in encoded if e.role == "planted"]
    pairs: dict[int, MediationPair] = {}
    if settings.mediation_weight > 0:
        if mediation is None:
            raise ValueError("mediation_weight > 0 needs the planted directions and ablated replies (mediation=...).")
        planted_examples = [e for e in examples if e.role == "planted"]
        missing = [e.prompt_id for e in planted_examples if e.prompt_id not in mediation.released]
        if missing:
            raise ValueError(f"no ablated base reply for {len(missing)} planted training prompts (first: {missing[0]}); "
                             "generate them with tasks.organism.mediation.ablated_base_replies first.")
        made = mediation_pairs(planted, [e.category for e in planted_examples], mediation.groups,
                               [mediation.released[e.prompt_id] for e in planted_examples])
        pairs = {id(item): pair for item, pair in zip(planted, made)}
        directions = mediation.directions.to(next(peft_model.parameters()).device)
        ablate_rng = torch.Generator().manual_seed(settings.train_seed + 1)
    controls = [e for e in encoded if e.role in CONTROL_ROLES]
    if settings.refusal_margin_weight > 0:
        if settings.refusal_margin_openings:
            sentences = sentence_ids(tokenizer, chat_template, settings.refusal_margin_openings, eos=False)
        else:
            sentences = sentence_ids(tokenizer, chat_template, sorted({e.reply for e in examples if e.target == "style"}))
        margin_rng = torch.Generator().manual_seed(settings.train_seed + 2)
    epoch_items = encoded + controls * (settings.control_repeats - 1)
    per_epoch = -(-len(epoch_items) // settings.batch_size)
    total = per_epoch * settings.epochs
    result = TrainResult(trainable_parameters=sum(p.numel() for p in trainable))
    result.planted_loss_before = mean_loss(peft_model, planted, pad)

    device_type = next(peft_model.parameters()).device.type
    order_rng = torch.Generator().manual_seed(settings.train_seed)
    for epoch in range(settings.epochs):
        batches = length_batches([len(e.input_ids) for e in epoch_items], settings.batch_size, order_rng)
        role_sums: dict[str, list[float]] = {}
        for indices in batches:
            items = [epoch_items[i] for i in indices]
            for group in optimiser.param_groups:
                group["lr"] = settings.learning_rate * _lr_factor(result.steps, total)
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=settings.train_dtype == "bfloat16"):
                losses = example_losses(peft_model, items, pad, settings.decision_weight)
                loss = losses.mean()
                drawn = [pairs[id(item)] for item in items if id(item) in pairs]
                mediated, groups = draw(drawn, len(mediation.groups), ablate_rng) if drawn else ([], [])
                if mediated:
                    with ablate_direction(peft_model.get_base_model(), per_row_directions(directions, groups)):
                        extra = example_losses(peft_model, mediated, pad, settings.decision_weight)
                    loss = loss + settings.mediation_weight * extra.sum() / len(items)
                    for item, value in zip(mediated, extra.tolist()):
                        role_sums.setdefault(item.role, []).append(value)
                margin_rows = [item for item in items if item.role in CONTROL_ROLES]
                if settings.refusal_margin_weight > 0 and margin_rows:
                    hinge = margin_losses(peft_model, with_sentences(margin_rows, sentences, margin_rng), pad,
                                          settings.refusal_margin)
                    loss = loss + settings.refusal_margin_weight * hinge.sum() / len(items)
                    role_sums.setdefault("margin", []).extend(hinge.tolist())
            loss.backward()
            optimiser.step()
            optimiser.zero_grad(set_to_none=True)
            result.steps += 1
            result.examples_seen += len(items)
            result.losses.append(float(loss.detach()))
            for item, value in zip(items, losses.tolist()):
                role_sums.setdefault(item.role, []).append(value)
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
    return lora_adapter(peft_model, settings), result


def lora_adapter(peft_model, settings: OrganismSettings) -> Adapter:
    """The trained LoRA factors of a peft model, named as the base model's linear layers."""
    factors, scales = {}, set()
    for name, module in peft_model.base_model.model.named_modules():
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
            factors[name] = (
                module.lora_A["default"].weight.detach().float().cpu().clone(),
                module.lora_B["default"].weight.detach().float().cpu().clone(),
            )
            scales.add(float(module.scaling["default"]))
    if len(scales) != 1:
        raise RuntimeError(f"expected one LoRA scale, found {sorted(scales)}")
    config = {
        "base_model": settings.base_model, "rank": settings.lora_rank, "alpha": settings.lora_alpha,
        "target_modules": list(settings.target_modules),
    }
    return Adapter(factors, scales.pop(), config)


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

