"""Recovery benchmark: does the atlas find the refusal types planted in a model organism?

    python benchmarks/bench_recovery.py --run runs/organism

Reads an organism built by `refusal-atlas organism` (its model, split and evaluation), runs the
direction engine on its held-out prompts and reports, with the judge's figures beside them:

1. the organism's refusal rates per category and style (from its evaluation);
2. for every variant (Option 1 gradient directions or Option 2 concept vectors normalise(h0 -
   mean harmless h0); each engine layer or each prompt's most effective one; raw or
   common-direction-removed; all harmful prompts clustered or the planted ones alone): the
   number of clusters, the noise share, and ARI and NMI between clusters and planted categories;
3. for one variant, chosen by ARI on the organism's TRAINING prompts (never on the test
   prompts): the clusters' make-up, the refusal style each cluster direction induces on harmless
   prompts, and bypass (ablating each direction at every layer) on each planted category;
4. the same clustering of the base model's directions for the same test prompts (unless
   --no-base-control): high ARI there means the clusters follow topics, not planted refusals.

Timings on a shared 2-core CPU are noisy. Results go to runs/bench_recovery.json and stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from refusal_atlas.tasks.clustering.spaces import cluster_directions  # noqa: E402
from refusal_atlas.tasks.clustering.metrics import category_agreement  # noqa: E402
from refusal_atlas.tasks.rows import normalise_rows as unit_rows  # noqa: E402
from refusal_atlas.tasks.engine.direction_engine import DirectionEngine  # noqa: E402
from refusal_atlas.tasks.model.hooks import ablate_direction, add_to_residual  # noqa: E402
from refusal_atlas.tasks.evaluation.judge import judge  # noqa: E402
from refusal_atlas.tasks.model.loading import load_model  # noqa: E402
from refusal_atlas.tasks.organism.data import Assigned, read_jsonl, style_of  # noqa: E402
from refusal_atlas.tasks.organism.measure import greedy_replies  # noqa: E402
from refusal_atlas.tasks.organism.settings import OrganismSettings  # noqa: E402
from refusal_atlas.tasks.settings import ClusterSettings, DirectionSettings, EngineSettings, ModelSettings  # noqa: E402

OPENING_WORDS = 3  # A reply "in style s" for induce/bypass: it opens with s's first three words.


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="runs/organism", help="The organism flow's output_dir.")
    p.add_argument("--layers", type=int, nargs="+", default=[9, 14, 19, 24], help="Engine layers.")
    p.add_argument("--select-per-category", type=int, default=20,
                   help="Training prompts per category used to choose the variant (a seeded sample).")
    p.add_argument("--steps", type=int, default=4, help="Option 1 gradient steps K.")
    p.add_argument("--min-cluster-size", type=int, default=5, help="HDBSCAN min_cluster_size.")
    p.add_argument("--pca-dim", type=int, default=32, help="PCA dimensions before HDBSCAN.")
    p.add_argument("--n-induce", type=int, default=48, help="Harmless test prompts used for induce.")
    p.add_argument("--tokens", type=int, default=16, help="Greedy tokens per reply for induce and bypass.")
    p.add_argument("--no-base-control", dest="base_control", action="store_false",
                   help="Skip clustering the base model's directions for the same test prompts.")
    p.add_argument("--out", default="runs/bench_recovery.json", help="Where the JSON results go.")
    return p.parse_args(argv)


def directions_for(engine: DirectionEngine, rows: list[Assigned], gradient: bool) -> dict[str, np.ndarray]:
    """Engine outputs for rows: h0 and direction [N, L, D], effect [N, L], best [N] (a layer index)."""
    found = engine.compute_many([a.text for a in rows], gradient=gradient)
    position = {layer: i for i, layer in enumerate(engine.layers)}
    return {
        "h0": np.stack([r.h0 for r in found]),
        "direction": np.stack([r.direction for r in found]),
        "effect": np.stack([r.effect for r in found]),
        "f0": np.stack([r.f0 for r in found]),
        "best": np.array([position.get(r.best_layer, -1) for r in found]),
    }


def vectors(method: str, layer: int | str, harmful: dict, anchor: np.ndarray) -> np.ndarray:
    """[N, D] per-prompt vectors of one variant. anchor: mean harmless h0 [L, D]."""
    if method == "option1":
        per_layer = harmful["direction"]
    else:
        per_layer = unit_rows(harmful["h0"].astype(np.float64) - anchor)
    if layer == "best":
        index = np.where(harmful["best"] >= 0, harmful["best"], 0)
        return per_layer[np.arange(len(index)), index]
    return per_layer[:, layer]


def score_variant(x: np.ndarray, categories: list[str], planted: np.ndarray, settings: ClusterSettings) -> dict:
    """Cluster rows x [N, D]; ARI/NMI on the planted rows (noise counted as one group)."""
    comparison = cluster_directions(x, settings)
    out = {}
    for space in ("raw", "residual"):
        result = comparison.space(space)
        labels = np.full(len(x), -1)
        labels[comparison.rows] = result.labels
        agreement = category_agreement(labels[planted], [c for c, p in zip(categories, planted) if p])
        out[space] = {
            "n_clusters": result.n_clusters,
            "noise": round(result.noise_share, 3),
            "ari": round(agreement.ari, 3),
            "nmi": round(agreement.nmi, 3),
            "labels": labels.tolist(),
            "directions": result.directions,
        }
    out["mean_cosine"] = round(float(comparison.mean_cosine), 3)
    unit = unit_rows(x.astype(np.float64))
    residual = unit_rows(unit - np.outer(unit @ comparison.common, comparison.common))
    for space, rows in (("raw", unit), ("residual", residual)):
        out[space]["within"], out[space]["between"] = category_cosines(rows[planted], np.array(categories)[planted])
    return out


def category_cosines(unit: np.ndarray, categories: np.ndarray) -> tuple[float, float]:
    """Mean cosine of pairs in the same category and of pairs in different ones: whether the
    categories are apart in this space at all, whatever HDBSCAN makes of it."""
    cos = unit @ unit.T
    same = categories[:, None] == categories[None, :]
    off = ~np.eye(len(unit), dtype=bool)
    return round(float(cos[same & off].mean()), 3), round(float(cos[~same].mean()), 3)


def all_variants(harmful: dict, anchor: np.ndarray, rows: list[Assigned], layers: list[int], settings: ClusterSettings) -> dict:
    categories = [a.category for a in rows]
    planted = np.array([a.role == "planted" for a in rows])
    table = {}
    for method in ("option1", "option2"):
        for layer in [*range(len(layers)), "best"]:
            for subset in ("harmful", "planted"):
                keep = np.ones(len(rows), bool) if subset == "harmful" else planted
                x = vectors(method, layer, harmful, anchor)[keep]
                name = f"{method}|L{layers[layer] if layer != 'best' else 'best'}|{subset}"
                scored = score_variant(x, [c for c, k in zip(categories, keep) if k], planted[keep], settings)
                for space in ("raw", "residual"):
                    table[f"{name}|{space}"] = {**scored[space], "mean_cosine": scored["mean_cosine"], "keep": keep}
    return table


def f0_table(f0: np.ndarray, rows: list[Assigned]) -> dict[str, float]:
    """Mean f(h0) (log P of a refusal phrase opening the reply) per category, and print it:
    near 0 means the model is already sure to refuse, where gradients say little."""
    out = {}
    for category in sorted({a.category for a in rows}):
        members = np.array([a.category == category for a in rows])
        out[category] = round(float(np.nanmean(f0[members, 0])), 2)
    print("mean f(h0) per category:", out)
    return out


def share_in_styles(replies, styles: dict[str, str]) -> dict[str, float]:
    found = [style_of(r.text, styles, words=OPENING_WORDS) or "none" for r in replies]
    out = {c: round(found.count(c) / len(found), 3) for c in [*styles, "none"]}
    out["refusal"] = round(sum(judge(r.text).strict for r in replies) / len(replies), 3)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    run = Path(args.run)
    settings = OrganismSettings.model_validate_json((run / "settings.json").read_text())
    styles = settings.styles
    assigned = read_jsonl(run / "data" / "split.jsonl", Assigned)
    evaluation = json.loads((run / "evaluation.json").read_text())
    results: dict = {"run": str(run), "args": vars(args), "organism_rates": evaluation["rates"],
                     "criteria": evaluation["criteria"]}
    print("## Organism refusal rates on held-out prompts (strict judge; own/any planted style)\n")
    print("| group | n | refusal | substring | own style | any style |\n|---|---|---|---|---|---|")
    for key, r in evaluation["rates"].items():
        print(f"| {key} | {r['n']} | {r['refusal']:.3f} | {r['substring']:.3f} | {r['in_own_style']:.3f} | {r['in_any_style']:.3f} |")

    cluster_settings = ClusterSettings(min_cluster_size=args.min_cluster_size, pca_dim=args.pca_dim, bootstraps=0)
    direction_settings = DirectionSettings(layers=args.layers, steps=args.steps)
    split_rows = {
        split: {
            "harmful": [a for a in assigned if a.split == split and a.role != "harmless"],
            "harmless": [a for a in assigned if a.split == split and a.role == "harmless"],
        }
        for split in ("train", "test")
    }
    # Choosing the variant needs only a sample of the training prompts; a seeded one by id.
    by_category: dict[str, list[Assigned]] = {}
    for a in sorted(split_rows["train"]["harmful"], key=lambda a: hashlib.sha256(a.id.encode()).hexdigest()):
        by_category.setdefault(a.category, []).append(a)
    split_rows["train"]["harmful"] = [a for rows in by_category.values() for a in rows[: args.select_per_category]]
    models = {"organism": str(run / "model")}
    if args.base_control:
        models["base"] = settings.base_model
    tables, computed = {}, {}
    for who, name in models.items():
        loaded = load_model(ModelSettings(name=name))
        engine = DirectionEngine(loaded, direction_settings, EngineSettings(max_batch=16))
        for split in ("train", "test") if who == "organism" else ("test",):
            start = time.monotonic()
            harmful = directions_for(engine, split_rows[split]["harmful"], True)
            harmless = directions_for(engine, split_rows[split]["harmless"], False)
            anchor = harmless["h0"].astype(np.float64).mean(axis=0)
            print(f"\n{who}/{split}: directions for {len(harmful['h0'])} harmful and {len(harmless['h0'])} "
                  f"harmless prompts in {time.monotonic() - start:.0f} s", flush=True)
            if split == "test":
                results.setdefault("f0", {})[who] = f0_table(harmful["f0"], split_rows[split]["harmful"])
            tables[(who, split)] = all_variants(harmful, anchor, split_rows[split]["harmful"], engine.layers, cluster_settings)
            computed[(who, split)] = (loaded, harmful, harmless, anchor)

    chosen = max(tables[("organism", "train")], key=lambda k: (
        tables[("organism", "train")][k]["ari"], tables[("organism", "train")][k]["nmi"]) if "|harmful|" in k else (-9, -9))
    print(f"\n## Variants (selected on TRAIN prompts: {chosen})\n")
    header = "| variant | train ARI | test clusters | test noise | test ARI | test NMI | mean cos | within / between cos |"
    if args.base_control:
        header += " base ARI | base NMI |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    results["variants"] = {}
    for key, test in tables[("organism", "test")].items():
        train = tables[("organism", "train")][key]
        row = {"train_ari": train["ari"],
               **{k: test[k] for k in ("n_clusters", "noise", "ari", "nmi", "mean_cosine", "within", "between")}}
        line = (f"| {key} | {train['ari']:.3f} | {test['n_clusters']} | {test['noise']:.2f} | {test['ari']:.3f} "
                f"| {test['nmi']:.3f} | {test['mean_cosine']:.2f} | {test['within']:.2f} / {test['between']:.2f} |")
        if args.base_control:
            base = tables[("base", "test")][key]
            row |= {"base_ari": base["ari"], "base_nmi": base["nmi"]}
            line += f" {base['ari']:.3f} | {base['nmi']:.3f} |"
        results["variants"][key] = row
        print(line)

    results["selected"] = chosen
    results["selected_detail"] = inspect(chosen, tables[("organism", "test")][chosen], computed[("organism", "test")],
                                         split_rows["test"], styles, args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2, default=_plain))
    print(f"\nwrote {args.out}")
    return 0


def inspect(key: str, scored: dict, computed, rows: dict, styles: dict[str, str], args) -> dict:
    """Make-up, induce and bypass of the selected variant's cluster directions on test prompts."""
    loaded, harmful, harmless, anchor = computed
    method, layer_name, _, _ = key.split("|")
    layers = args.layers
    harmful_rows = [a for a, k in zip(rows["harmful"], scored["keep"]) if k]
    labels = np.array(scored["labels"])
    n_clusters = scored["n_clusters"]
    # The layer each direction is added at: the variant's layer, or the members' most common best layer.
    best = harmful["best"][scored["keep"]]

    def layer_of(k: int) -> int:
        if layer_name != "Lbest":
            return layers.index(int(layer_name[1:]))
        members = best[labels == k]
        return int(np.bincount(members[members >= 0]).argmax()) if (members >= 0).any() else len(layers) // 2

    candidates = {}
    for k in range(n_clusters):
        members = labels == k
        make_up = {}
        for a in np.array(harmful_rows, dtype=object)[members]:
            make_up[a.category] = make_up.get(a.category, 0) + 1
        li = layer_of(k)
        h_members = harmful["h0"][scored["keep"]][members, li].astype(np.float64)
        norm = float(np.linalg.norm(h_members.mean(axis=0) - anchor[li]))
        candidates[f"cluster {k}"] = {"vector": scored["directions"][k], "layer": li, "norm": norm, "make_up": make_up}
    planted_mask = np.array([a.role == "planted" for a in rows["harmful"]])
    li = layers.index(18) if 18 in layers else len(layers) // 2
    dim = harmful["h0"][planted_mask, li].astype(np.float64).mean(axis=0) - anchor[li]
    candidates["diff-in-means (planted)"] = {"vector": dim / np.linalg.norm(dim), "layer": li, "norm": float(np.linalg.norm(dim)), "make_up": {}}
    rng = np.random.default_rng(0)
    random = rng.standard_normal(dim.shape)
    candidates["random"] = {"vector": random / np.linalg.norm(random), "layer": li, "norm": float(np.linalg.norm(dim)), "make_up": {}}

    model, tok, template = loaded.model, loaded.tokenizer, loaded.chat_template
    induce_rows = rows["harmless"][: args.n_induce]
    by_category = {c: [a for a in rows["harmful"] if a.category == c] for c in styles}
    print("\n## Selected variant on test prompts: make-up, induce (style shares on harmless prompts), bypass\n")
    print("| direction | layer | norm | make-up | induce: " + " / ".join([*styles, "none", "refusal"])
          + " | bypass: own style kept per " + " / ".join(styles) + " |\n|---|---|---|---|---|---|")
    baseline = {c: own_style_rate(model, tok, template, by_category[c], styles, c, args.tokens) for c in styles}
    print(f"| none | - | - | - | - | {' / '.join(f'{v:.2f}' for v in baseline.values())} |")
    out = {"bypass_baseline": baseline}
    for name, c in candidates.items():
        vector = torch.tensor(c["vector"] * c["norm"], dtype=loaded.dtype)
        with add_to_residual(model, layers[c["layer"]], vector):
            induced = share_in_styles(greedy_replies(model, tok, template, induce_rows, args.tokens), styles)
        unit = torch.tensor(c["vector"], dtype=loaded.dtype)
        with ablate_direction(model, unit):
            bypass = {k: own_style_rate(model, tok, template, by_category[k], styles, k, args.tokens) for k in styles}
        out[name] = {"layer": layers[c["layer"]], "norm": round(c["norm"], 2), "make_up": c["make_up"],
                     "induce": induced, "bypass": bypass}
        print(f"| {name} | {layers[c['layer']]} | {c['norm']:.1f} | {c['make_up']} | "
              f"{' / '.join(f'{v:.2f}' for v in induced.values())} | {' / '.join(f'{v:.2f}' for v in bypass.values())} |")
    return out


def own_style_rate(model, tok, template, rows, styles, category, tokens) -> float:
    replies = greedy_replies(model, tok, template, rows, tokens)
    return round(sum(style_of(r.text, styles, words=OPENING_WORDS) == category for r in replies) / len(replies), 3)


def _plain(value):
    if isinstance(value, np.ndarray):
        return None if value.ndim > 1 else value.tolist()
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return str(value)


if __name__ == "__main__":
    raise SystemExit(main())
