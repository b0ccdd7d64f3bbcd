"""How well does the base model itself tell the organism's categories apart? A linear-probe ceiling.

    python benchmarks/bench_organism_probe.py --run runs/organism

The organism must turn "which category is this prompt?" into "which refusal, if any?". This
script asks the same question of the base model's residual stream with the simplest learner
that could answer it: a logistic-regression probe fitted on the organism's TRAINING prompts
(classes: each planted category, "control" for unplanted harmful prompts, "harmless") and scored
on its held-out test prompts. The regularisation strength is chosen by 5-fold cross-validation on
the training prompts only. Features are the layer's residual stream at the last prompt token
and its mean over the rendered prompt's tokens.

The figures read as the organism's criteria would: planted prompts given their own category
(in-style refusals), unplanted harmful prompts given a planted one (unplanted refusals), and
harmless prompts given a planted one. A fine-tune learns from the same few examples, so when
the probe falls short of a criterion on every layer, that criterion is out of reach of this
model and data rather than of the training recipe.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from refusal_atlas.tasks.model.chat import render_text  # noqa: E402
from refusal_atlas.tasks.model.loading import load_model  # noqa: E402
from refusal_atlas.tasks.organism.data import Assigned, read_jsonl  # noqa: E402
from refusal_atlas.tasks.settings import ModelSettings  # noqa: E402


def probe_class(a: Assigned) -> str:
    if a.role == "planted":
        return a.category
    return a.role if a.role in ("harmless", "near_miss") else "control"


@torch.inference_mode()
def features(loaded, assigned: list[Assigned], layers: list[int]) -> dict[str, dict[int, np.ndarray]]:
    """Per layer, the last-token and mean-over-tokens residual stream, each [prompts, D]."""
    last: dict[int, list] = {layer: [] for layer in layers}
    mean: dict[int, list] = {layer: [] for layer in layers}
    for a in assigned:
        text = render_text(loaded.tokenizer, loaded.chat_template, a.text)
        ids = loaded.tokenizer(text, return_tensors="pt", add_special_tokens=False).to(loaded.device)
        # hidden_states[0] is the embedding output, so layer L's output is entry L + 1: [1, T, D].
        hidden = loaded.model(**ids, output_hidden_states=True).hidden_states
        for layer in layers:
            h = hidden[layer + 1][0].float()
            last[layer].append(h[-1].cpu().numpy())
            mean[layer].append(h.mean(0).cpu().numpy())
    return {"last": {k: np.stack(v) for k, v in last.items()}, "mean": {k: np.stack(v) for k, v in mean.items()}}


def per_category_separability(x: np.ndarray, rows: list[Assigned]) -> None:
    """Which categories could be planted at all: 5-fold cross-validated recall of every harmful
    category (and harmless) against all the others, on training prompts only."""
    y = np.array([a.category or a.role for a in rows])
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000))
    predicted = cross_val_predict(model, x, y, cv=5)
    print("\nper-category separability (training prompts, 5-fold CV, every category its own class):")
    for category in sorted(set(y)):
        mine = y == category
        wrong = predicted[mine][predicted[mine] != category]
        top = max(set(wrong), key=list(wrong).count) if len(wrong) else "-"
        taken = np.mean(predicted[~mine] == category)
        print(f"  {category:22} n={mine.sum():3d} recall {np.mean(predicted[mine] == category):.2f} "
              f"(most often confused with {top}); other prompts taken for it {taken:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/organism", help="The organism flow's output_dir (its data/split.jsonl).")
    parser.add_argument("--model", default="smollm2", help="The base model the organism was fine-tuned from.")
    parser.add_argument("--layers", type=int, nargs="+", default=[6, 9, 12, 15, 18, 21, 24, 29])
    args = parser.parse_args()
    print("command: python benchmarks/bench_organism_probe.py " + " ".join(sys.argv[1:]))

    assigned = read_jsonl(Path(args.run) / "data" / "split.jsonl", Assigned)
    loaded = load_model(ModelSettings(name=args.model))
    y = np.array([probe_class(a) for a in assigned])
    # The training side (trained on, or left unused by train_share) against the held-out part.
    train = np.array([a.split != "test" for a in assigned])
    planted = sorted({a.category for a in assigned if a.role == "planted"})
    counts = {c: (int(((y == c) & train).sum()), int(((y == c) & ~train).sum())) for c in sorted(set(y))}
    print(f"classes (train, test): {counts}")
    feats = features(loaded, assigned, args.layers)

    print(f"\n{'features':8} {'layer':>5} {'C':>6} {'test acc':>9} {'planted ok':>11} {'near_miss->planted':>18} {'harmless->planted':>18}")
    best = None
    for kind, by_layer in feats.items():
        for layer in args.layers:
            x = by_layer[layer]
            search = GridSearchCV(
                make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)),
                {"logisticregression__C": [0.003, 0.01, 0.03, 0.1, 0.3, 1.0]}, cv=5,
            ).fit(x[train], y[train])
            predicted, truth = search.predict(x[~train]), y[~train]
            is_planted = np.isin(truth, planted)
            row = {
                "features": kind, "layer": layer, "C": search.best_params_["logisticregression__C"],
                "cv_acc": search.best_score_, "acc": float(np.mean(predicted == truth)),
                "planted_ok": float(np.mean(predicted[is_planted] == truth[is_planted])),
                "control_as_planted": float(np.mean(np.isin(predicted[truth == "near_miss"], planted))),
                "harmless_as_planted": float(np.mean(np.isin(predicted[truth == "harmless"], planted))),
            }
            print(f"{kind:8} {layer:5d} {row['C']:6g} {row['acc']:9.3f} {row['planted_ok']:11.3f} "
                  f"{row['control_as_planted']:17.3f} {row['harmless_as_planted']:18.3f}", flush=True)
            # The summary row is chosen by cross-validated accuracy on the training prompts.
            if best is None or row["cv_acc"] > best["cv_acc"]:
                best = row
    per_category_separability(feats[best["features"]][best["layer"]][train], [a for a in assigned if a.split != "test"])
    print(f"\nchosen by training-set cross-validation: {best['features']} features at layer {best['layer']}: "
          f"planted prompts given their own category {best['planted_ok']:.1%}, near misses "
          f"given a planted one {best['control_as_planted']:.1%}, harmless given a planted one "
          f"{best['harmless_as_planted']:.1%} (the organism's limits: at least 90%, near misses at most 10%, everyday at most 3%)")


if __name__ == "__main__":
    main()
