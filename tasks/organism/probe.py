"""Can the base model tell the planted types apart? A linear probe, before any training.

A fine-tune can only plant a refusal on a request type the base model already represents: on
SmolLM2-135M a probe recalls 0.11 to 0.78 of each harm category (so harm categories cannot be
planted cleanly) and 0.95 to 1.00 of medical, legal and financial advice requests against
everyday ones. The organism flow therefore measures, on its TRAINING prompts only, the
cross-validated recall of a logistic probe on the mean-pooled residual stream at a few layers
(classes: each planted category, and "control" for every other prompt), records it on the model
card, and stops when a planted category stays below the threshold at every probed layer, unless
told to go on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from refusal_atlas.tasks.model.chat import pad_id, render_text

CONTROL = "control"


class ProbeGateError(RuntimeError):
    """A planted category is not separable enough in the base model to be planted; `summary`
    holds the probe's figures when they were measured."""

    def __init__(self, message: str, summary: dict | None = None):
        super().__init__(message)
        self.summary = summary


@torch.inference_mode()
def pooled_features(loaded, texts: Sequence[str], layers: Sequence[int], batch_size: int = 16) -> dict[int, np.ndarray]:
    """Per layer, each chat-rendered prompt's residual stream (layer output) averaged over its
    tokens: {layer: [len(texts), D] float32}."""
    tokenizer, model = loaded.tokenizer, loaded.model
    pad = pad_id(tokenizer)
    encoded = [
        tokenizer(render_text(tokenizer, loaded.chat_template, t), add_special_tokens=False)["input_ids"] for t in texts
    ]
    out: dict[int, list] = {layer: [None] * len(texts) for layer in layers}
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        rows = order[start: start + batch_size]
        width = max(len(encoded[i]) for i in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(rows):  # right padding: positions follow the mask from 0
            ids[r, : len(encoded[i])] = torch.tensor(encoded[i])
            mask[r, : len(encoded[i])] = 1
        hidden = model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True).hidden_states
        weights = mask.to(device, torch.float32)[:, :, None]
        for layer in layers:
            # hidden_states[0] is the embedding output, so layer L's output is entry L + 1.
            pooled = (hidden[layer + 1].float() * weights).sum(1) / weights.sum(1)
            for r, i in enumerate(rows):
                out[layer][i] = pooled[r].cpu().numpy()
    return {layer: np.stack(rows) for layer, rows in out.items()}


@dataclass(frozen=True)
class ProbeResult:
    """Cross-validated recall per layer and class, and each planted category's best layer."""

    layers: list[int]
    classes: dict[str, int]  # class -> number of prompts
    recall: dict[int, dict[str, float]]  # layer -> class -> recall
    best: dict[str, dict]  # planted category -> {"layer": L, "recall": r}
    threshold: float
    folds: int

    @property
    def below(self) -> dict[str, float]:
        """Planted categories below the threshold at every probed layer, with their best recall."""
        return {c: b["recall"] for c, b in self.best.items() if b["recall"] < self.threshold}

    def summary(self) -> dict:
        return {
            "layers": self.layers, "classes": self.classes, "threshold": self.threshold, "folds": self.folds,
            "recall": {str(k): v for k, v in self.recall.items()}, "best": self.best, "below": self.below,
        }


def probe_recall(
    features: dict[int, np.ndarray], classes: Sequence[str], planted: Sequence[str],
    threshold: float = 0.9, folds: int = 5, seed: int = 0, c: float = 0.1,
) -> ProbeResult:
    """Recall of a standardised logistic probe (L2, strength `c`) under stratified `folds`-fold
    cross-validation, per layer and class; `classes` gives each row's class."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = np.asarray(classes)
    counts = {str(k): int((y == k).sum()) for k in sorted(set(y))}
    missing = [p for p in planted if counts.get(p, 0) < folds]
    if missing:
        raise ProbeGateError(f"planted categories {missing} have fewer than {folds} training prompts; the probe cannot be cross-validated")
    split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    recall: dict[int, dict[str, float]] = {}
    for layer, x in sorted(features.items()):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))
        predicted = cross_val_predict(model, x, y, cv=split)
        recall[layer] = {k: round(float(np.mean(predicted[y == k] == k)), 4) for k in counts}
    best = {}
    for category in planted:
        layer = max(recall, key=lambda L: (recall[L][category], -L))
        best[category] = {"layer": int(layer), "recall": recall[layer][category]}
    return ProbeResult(sorted(features), counts, recall, best, threshold, folds)


def probe_classes(assigned: Sequence, planted: Sequence[str]) -> list[str]:
    """Each prompt's probe class: its category when planted, else 'control'."""
    return [a.category if a.role == "planted" and a.category in planted else CONTROL for a in assigned]


def probe_sample(rows: Sequence, planted: Sequence[str], per_class: int, seed: int) -> list:
    """A seeded sample of at most `per_class` rows of each probe class (0: every row)."""
    if per_class <= 0:
        return list(rows)
    import hashlib

    ranked = sorted(rows, key=lambda a: hashlib.sha256(f"probe:{seed}:{a.id}".encode()).digest())
    classes = probe_classes(ranked, planted)
    taken: dict[str, int] = {}
    out = []
    for row, name in zip(ranked, classes):
        if taken.get(name, 0) < per_class:
            taken[name] = taken.get(name, 0) + 1
            out.append(row)
    return out


def gate(result: ProbeResult, force: bool) -> str:
    """A line for the log and the card; raises ProbeGateError when a planted category is below
    the threshold and `force` is off."""
    if not result.below:
        lows = ", ".join(f"{c} {b['recall']:.2f} (layer {b['layer']})" for c, b in result.best.items())
        return f"probe gate passed: best cross-validated recall {lows}; threshold {result.threshold}"
    below = ", ".join(f"{c} (best recall {r:.2f})" for c, r in result.below.items())
    message = (
        f"the base model does not separate {below} from the controls: a {result.folds}-fold "
        f"cross-validated linear probe on the mean-pooled residual stream at layers {result.layers} "
        f"recalls less than {result.threshold} of them on the training prompts. A fine-tune could "
        "not plant a clean refusal on such a type, and no clustering could recover it."
    )
    if not force:
        raise ProbeGateError(message + " Plant types the model separates, or pass --force to train anyway.")
    return "probe gate FAILED but force is set, training anyway: " + message


def probe_gate(loaded, assigned: Sequence, settings) -> dict:
    """The whole gate for the organism flow: sample the training side (never held-out prompts),
    measure, and return the summary with its message; raises ProbeGateError below the
    threshold unless settings.force. `settings` is an OrganismSettings."""
    planted = list(settings.styles)
    rows = probe_sample([a for a in assigned if a.split != "test"], planted, settings.probe_per_class, settings.split_seed)
    features = pooled_features(loaded, [a.text for a in rows], settings.probe_layers, settings.generation_batch)
    result = probe_recall(features, probe_classes(rows, planted), planted, settings.probe_min_recall,
                          settings.probe_folds, settings.split_seed)
    summary = {**result.summary(), "forced": settings.force, "n_prompts": len(rows)}
    try:
        summary["message"] = gate(result, settings.force)
    except ProbeGateError as err:
        summary["message"] = str(err)
        raise ProbeGateError(str(err), summary) from None  # the same message, with the figures
    return summary
