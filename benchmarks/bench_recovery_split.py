"""Why does a planted type's cluster fail the verdict's stability test? Does it split, in the
bootstrap resamples, along a fault in the organism's own mechanism?

    python benchmarks/bench_recovery_split.py runs/recovery/three-style-organism.zarr
    python benchmarks/bench_recovery_split.py STORE --type legal_advice --model runs/organism/adapter

For the clustering run in STORE (a store written by benchmarks/bench_recovery.py on a
refusal model organism) and one planted type (by default every type whose majority cluster
failed the stability criterion):

1. the bootstraps of the stability test, redrawn with its seeds (tasks.clustering.stability):
   in how many does the type's prompts fall into two or more clusters (each with at least
   min_cluster_size of them)? In each such resample, the part whose directions have the lower
   mean cosine with the type's planted direction is called its "low" part;
2. the organism with the type's planted direction ablated at every layer (the evaluation's
   bypass): which of the type's prompts does it still refuse in the type's own style (the
   first three words of its sentence, as the evaluation counts them)?
3. the two side by side: each prompt's share of split resamples spent in the low part, its
   direction's cosine with the planted direction, and its effect.

If the prompts that still refuse without the planted direction are the ones the resamples cut
off, the cluster's instability reports the organism's mechanism (part of the type refuses
through something else), not a fault of the clustering. Figures go to stdout and --out (JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from math import comb
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("store", help="A store written by benchmarks/bench_recovery.py on an organism.")
    p.add_argument("--run", default="", help="Clustering run in the store ('' when it holds only one).")
    p.add_argument("--type", dest="types", action="append", default=[],
                   help="Planted type to examine (repeatable; default: those whose cluster is unstable).")
    p.add_argument("--model", default="smollm2-organism",
                   help="The organism the store was computed on (the shipped alias or an adapter directory).")
    p.add_argument("--tokens", type=int, default=12, help="Greedy reply tokens judged for the own-style opening.")
    p.add_argument("--out", default="runs/bench_recovery_split.json", help="Where the JSON results go.")
    return p.parse_args(argv)


def clustered_rows(store, run: str):
    """(clustering, directions [n, D] and effects [n] at each row's clustered layer, categories [n])."""
    from refusal_atlas.tasks.clustering.load import load_store_clustering

    clustering = load_store_clustering(store, run)
    rows = clustering.rows
    layers = [int(layer) for layer in rows.layers]
    position = np.asarray([layers.index(int(layer)) for layer in clustering.comparison.row_layer])
    data = store.read_rows(rows.store_rows, ("direction", "effect"))
    picked = np.arange(rows.store_rows.size), position
    directions = np.asarray(data["direction"][picked], dtype=np.float64)
    return clustering, directions, np.asarray(data["effect"][picked]), np.asarray(rows.categories, dtype=object)


def unstable_types(clustering, categories: np.ndarray) -> list[str]:
    """Planted types whose majority cluster failed the stability criterion."""
    sig = clustering.significance
    labels = clustering.comparison.result.labels
    out = []
    for category in sorted({c for c in categories if c}):
        members = labels[categories == category]
        members = members[members >= 0]
        if members.size and not bool(sig.stability.stable[np.bincount(members).argmax()]):
            out.append(category)
    return out


def low_part_shares(directions, settings, categories, category, planted_unit, space, seed, n_bootstraps):
    """Per prompt of `category`: the share of split resamples that put it in the low part (NaN
    when it was never drawn in one), and the number of split resamples."""
    from refusal_atlas.tasks.clustering.null_model import cluster_rows
    from refusal_atlas.tasks.clustering.stability import resample

    members = np.flatnonzero(categories == category)
    where = {int(row): i for i, row in enumerate(members)}
    unit = directions / np.linalg.norm(directions, axis=1, keepdims=True)
    cosine = unit[members] @ planted_unit
    low = np.zeros(members.size)
    seen = np.zeros(members.size)
    split = 0
    for b in range(n_bootstraps):
        rows = resample(len(directions), seed, b)  # the stability test's b-th resample
        boot = cluster_rows(directions[rows], settings, space).labels
        mine = categories[rows] == category
        drawn, their = rows[mine], boot[mine]
        parts = [lab for lab in np.unique(their) if lab >= 0 and (their == lab).sum() >= settings.min_cluster_size]
        if len(parts) < 2:
            continue
        split += 1
        mean = {lab: cosine[[where[int(r)] for r in drawn[their == lab]]].mean() for lab in parts}
        lowest = min(mean, key=mean.get)
        for row, lab in zip(drawn, their):
            if lab in parts:
                seen[where[int(row)]] += 1
                low[where[int(row)]] += lab == lowest
    with np.errstate(invalid="ignore"):
        return members, cosine, np.where(seen > 0, low / np.maximum(seen, 1), np.nan), split


def still_refusing(loaded, texts, direction, style: str, tokens: int) -> np.ndarray:
    """Per text: does the organism, with `direction` ablated at every layer, still open its
    greedy reply with the type's own sentence (its first three words)?"""
    import torch

    from refusal_atlas.tasks.model.hooks import ablate_direction
    from refusal_atlas.tasks.organism.data import style_of
    from refusal_atlas.tasks.organism.measure import greedy_replies

    prompts = [SimpleNamespace(id=str(i), text=t) for i, t in enumerate(texts)]
    dtype = next(loaded.model.parameters()).dtype
    with torch.no_grad(), ablate_direction(loaded.model, direction.to(dtype)):
        replies = greedy_replies(loaded.model, loaded.tokenizer, loaded.chat_template, prompts, tokens)
    return np.array([style_of(r.text, {"own": style}, words=3) is not None for r in replies])


def main(argv=None) -> int:
    args = parse_args(argv)
    from refusal_atlas.storage import AtlasStore
    from refusal_atlas.tasks.model.loading import load_model, planted_styles
    from refusal_atlas.tasks.organism.mediation import planted_mechanism
    from refusal_atlas.tasks.settings import ModelSettings

    store = AtlasStore.open(args.store)
    runs = store.list_cluster_runs()
    if not args.run and len(runs) != 1:
        raise SystemExit(f"{args.store} holds {len(runs)} clustering runs ({', '.join(runs) or 'none'}); "
                         "pass --run NAME to pick one.")
    run = args.run or runs[0]
    clustering, directions, effect, categories = clustered_rows(store, run)
    if clustering.significance is None:
        raise SystemExit(f"run {run} in {args.store} has no significance tests (no verdict was computed); "
                         "run benchmarks/bench_recovery.py, whose settings compute them.")
    mechanism, styles = planted_mechanism(args.model), planted_styles(args.model)
    if mechanism is None or styles is None:
        raise SystemExit(f"{args.model!r} is not an organism trained with planted directions; pass --model "
                         "the organism the store was computed on.")
    planted, groups, _ = mechanism
    types = args.types or unstable_types(clustering, categories)
    if not types:
        print("every planted type's cluster is stable; nothing to examine (pass --type to look anyway).")
        return 0
    loaded = load_model(ModelSettings(name=args.model))
    texts = np.asarray(clustering.rows.texts, dtype=object)
    comparison = clustering.comparison
    resamples = clustering.significance.stability.n_bootstraps  # as many as the stored test drew
    results = {"store": args.store, "run": run, "types": {}}
    for category in types:
        started = time.perf_counter()
        group = next(g for g, members in enumerate(groups) if category in members)
        unit = planted[group].double().numpy()
        unit = unit / np.linalg.norm(unit)
        members, cosine, low, split = low_part_shares(
            directions, comparison.settings, categories, category, unit, comparison.chosen,
            comparison.settings.seed, resamples)
        keeps = still_refusing(loaded, list(texts[members]), planted[group], styles[category], args.tokens)
        in_low = low > 0.5
        results["types"][category] = r = {
            "prompts": int(members.size),
            "split_resamples": split,
            "resamples": resamples,
            "still_refusing": int(keeps.sum()),
            "still_refusing_in_low_part": int((keeps & in_low).sum()),
            "low_part": int(in_low.sum()),
            "overlap_p": overlap_p(int(members.size), int(in_low.sum()), int(keeps.sum()), int((keeps & in_low).sum())),
            "median_cosine": {"still refusing": _median(cosine[keeps]), "released": _median(cosine[~keeps]),
                              "low part": _median(cosine[in_low]), "other part": _median(cosine[~in_low])},
            "median_effect": {"still refusing": _median(effect[members][keeps]),
                              "released": _median(effect[members][~keeps])},
            "low_share_of_still_refusing": [None if np.isnan(v) else float(v) for v in low[keeps]],
            "seconds": round(time.perf_counter() - started, 1),
        }
        print(f"\n{category}: {r['prompts']} prompts; split in {split} of {resamples} resamples; "
              f"{r['low_part']} mostly in the low part.")
        print(f"  ablating its planted direction leaves {r['still_refusing']} refusing in its own style, "
              f"{r['still_refusing_in_low_part']} of them in the low part (chance of that many or more: "
              f"{'n/a' if r['overlap_p'] is None else format(r['overlap_p'], '.4f')})")
        print("  median cosine with the planted direction: " + ", ".join(
            f"{k} {v:.3f}" for k, v in r["median_cosine"].items() if v is not None))
        print("  median effect: " + ", ".join(f"{k} {v:.4f}" for k, v in r["median_effect"].items() if v is not None))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out}")
    return 0


def overlap_p(total: int, low: int, drawn: int, hits: int) -> float | None:
    """P(at least `hits` of `drawn` prompts in the low part) when `drawn` of `total` prompts, `low`
    of them in the low part, are picked at random (the hypergeometric upper tail, Fisher's exact
    test one-sided): how surprising the overlap would be if the two had nothing to do with each other."""
    if drawn == 0:
        return None
    return sum(comb(low, k) * comb(total - low, drawn - k) for k in range(hits, drawn + 1)) / comb(total, drawn)


def _median(values: np.ndarray) -> float | None:
    return float(np.median(values)) if values.size else None


if __name__ == "__main__":
    sys.exit(main())
