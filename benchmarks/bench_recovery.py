"""Recovery benchmark: does the atlas find the refusal types planted in the model organism?

    python benchmarks/bench_recovery.py                                   # shipped organism and the base model
    python benchmarks/bench_recovery.py --single runs/organism-single/adapter   # and the single-style organism

The held-out prompts are the organism flow's own split, rebuilt from its default settings (the
same seeded split the shipped adapter was trained on), so no run directory is needed. For each
model the atlas runs with its defaults (DirectionSettings(): Option 1 gradient directions, K = 4,
layers 12/18/24; ClusterSettings(): the middle stored layer, HDBSCAN min_cluster_size 5 after
32-dim PCA, the residual space, with the raw space reported beside it) on the held-out
planted-type prompts; no setting is chosen on held-out prompts. Reported per model and space:
cluster count, noise, ARI and NMI against the planted types, and the confusion table
(tasks.report.recovery). For the organisms, each cluster direction is then added on held-out
everyday controls (which refusal style does it induce?) and ablated at every layer on held-out
planted prompts (which style does it remove?).

The verdict (how many directions the evidence supports) belongs to the evaluation (issue 14,
tasks.evaluation.verdict); `verdict_for` is the hook that passes it to the recovery section once
that module exists, and says "pending" until then. Figures go to stdout and --out (JSON).
Timings on a shared 2-core CPU are noisy.
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
from refusal_atlas.tasks.engine.direction_engine import DirectionEngine  # noqa: E402
from refusal_atlas.tasks.model.hooks import ablate_direction, add_to_residual  # noqa: E402
from refusal_atlas.tasks.model.loading import load_model  # noqa: E402
from refusal_atlas.tasks.organism.data import assign, style_of  # noqa: E402
from refusal_atlas.tasks.organism.measure import greedy_replies  # noqa: E402
from refusal_atlas.tasks.organism.settings import DEFAULT_SINGLE_STYLE, OrganismSettings  # noqa: E402
from refusal_atlas.tasks.prompts.records import load_prompts  # noqa: E402
from refusal_atlas.tasks.report.recovery import recovery_markdown, recovery_section  # noqa: E402
from refusal_atlas.tasks.settings import ClusterSettings, DirectionSettings, EngineSettings, ModelSettings  # noqa: E402

OPENING_WORDS = 3  # induce/ablate: a reply is "in style s" when it opens with s's first three words


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--organism", default="smollm2-organism", help="The three-style organism (a model name or adapter directory).")
    p.add_argument("--base", default="smollm2", help="The base model, for the planted-nothing comparison ('' to skip).")
    p.add_argument("--single", default="", help="The single-style organism's adapter directory ('' to skip).")
    p.add_argument("--single-style", default=DEFAULT_SINGLE_STYLE, help="The single-style organism's refusal sentence.")
    p.add_argument("--per-type", type=int, default=0, help="Held-out prompts per planted type (a seeded sample; 0: all).")
    p.add_argument("--n-induce", type=int, default=24, help="Held-out everyday controls used for induce.")
    p.add_argument("--n-ablate", type=int, default=12, help="Held-out prompts per planted type used for ablation.")
    p.add_argument("--tokens", type=int, default=20, help="Greedy tokens per reply for induce and ablation.")
    p.add_argument("--no-effects", dest="effects", action="store_false", help="Skip induce and ablation.")
    p.add_argument("--out", default="runs/bench_recovery.json", help="Where the JSON results go.")
    return p.parse_args(argv)


def _sample(rows: list, n: int) -> list:
    ordered = sorted(rows, key=lambda a: hashlib.sha256(a.id.encode()).hexdigest())
    return ordered if n <= 0 else ordered[:n]


def verdict_for(comparison, section: dict) -> dict | None:
    """The evaluation's verdict for this clustering, once tasks.evaluation.verdict exists (issue 14).

    Hook: import it here and return {'summary': ..., 'n_directions': ...}; until then None, and
    the recovery section says the verdict is pending.
    """
    try:
        from refusal_atlas.tasks.evaluation import verdict  # noqa: F401  (not merged yet)
    except ImportError:
        return None
    return None  # wire verdict.<function>(comparison, ...) here when its signature is settled


def style_shares(replies, styles: dict[str, str]) -> dict[str, float]:
    names = {style: category for category, style in styles.items()}  # one name per distinct sentence
    if len(names) == 1:
        names = {style: "single style" for style in names}
    found = []
    for r in replies:
        category = style_of(r.text, styles, words=OPENING_WORDS)
        found.append(names[styles[category]] if category else "none")
    return {k: round(found.count(k) / len(found), 3) for k in [*dict.fromkeys(names.values()), "none"]}


def own_style(replies, rows, styles: dict[str, str]) -> float:
    hits = [style_of(r.text, styles, words=OPENING_WORDS) for r in replies]
    return round(float(np.mean([h is not None and styles[h] == styles[a.category] for h, a in zip(hits, rows)])), 3)


def run_model(who: str, name: str, planted: list, controls: list, styles: dict[str, str] | None, args) -> dict:
    start = time.monotonic()
    loaded = load_model(ModelSettings(name=name))
    engine = DirectionEngine(loaded, DirectionSettings(), EngineSettings())
    found = engine.compute_many([a.text for a in planted], gradient=True)
    harmless = engine.compute_many([a.text for a in controls], gradient=False)
    layers = engine.layers
    li = len(layers) // 2  # the atlas's default: the middle stored layer
    x = np.stack([r.direction[li] for r in found])
    comparison = cluster_directions(x, ClusterSettings(bootstraps=0))
    types = [a.category for a in planted]
    out = {"model": name, "layer": layers[li], "n_prompts": len(planted), "mean_cosine": round(float(comparison.mean_cosine), 3),
           "f0_mean": {c: round(float(np.mean([r.f0[li] for r, a in zip(found, planted) if a.category == c])), 3)
                       for c in dict.fromkeys(types)},
           "directions_seconds": round(time.monotonic() - start, 1), "spaces": {}}
    print(f"\n# {who} ({name}): directions for {len(planted)} held-out planted prompts in {out['directions_seconds']} s; "
          f"layer {layers[li]}; mean pairwise cosine {out['mean_cosine']}; mean f(h0) per type {out['f0_mean']}")
    for space in ("residual", "raw"):
        result = comparison.space(space)
        labels = np.full(len(planted), -1)
        labels[comparison.rows] = result.labels
        section = recovery_section(labels.tolist(), types, list(dict.fromkeys(types)),
                                   title=f"{who}: {space} space (default: {ClusterSettings().space})")
        section["verdict"] = verdict_for(comparison, section)
        out["spaces"][space] = {"section": section, "labels": labels.tolist()}
        print(recovery_markdown(section, level=2))
    if styles is not None and args.effects:
        out["effects"] = effects(loaded, comparison, found, harmless, planted, controls, styles, li, layers[li], args)
        section = out["spaces"][comparison.chosen]["section"]
        section = recovery_section(out["spaces"][comparison.chosen]["labels"], types, list(dict.fromkeys(types)),
                                   induce=out["effects"]["induce"], ablate=out["effects"]["ablate"],
                                   verdict=section["verdict"], title=f"{who}: recovery section ({comparison.chosen} space)")
        out["section"] = section
        print(recovery_markdown(section, level=2))
    out["seconds"] = round(time.monotonic() - start, 1)
    return out


def effects(loaded, comparison, found, harmless, planted, controls, styles, li: int, layer: int, args) -> dict:
    """Induce (cluster direction added at its layer on held-out everyday controls, at the norm
    of the members' mean minus the controls' mean) and ablation (at every layer, on held-out
    planted prompts) of each cluster direction of the default space."""
    model, tok, template = loaded.model, loaded.tokenizer, loaded.chat_template
    result = comparison.space(comparison.chosen)
    labels = np.full(len(planted), -1)
    labels[comparison.rows] = result.labels
    h0 = np.stack([r.h0[li] for r in found]).astype(np.float64)
    anchor = np.stack([r.h0[li] for r in harmless]).astype(np.float64).mean(0)
    induce_rows = _sample(controls, args.n_induce)
    by_type = {c: _sample([a for a in planted if a.category == c], args.n_ablate) for c in dict.fromkeys(styles)}
    before = {c: own_style(greedy_replies(model, tok, template, rows, args.tokens), rows, styles) for c, rows in by_type.items()}
    induce = {"none": style_shares(greedy_replies(model, tok, template, induce_rows, args.tokens), styles)}
    ablate = {}
    for k in range(result.n_clusters):
        name = f"cluster {k}"
        unit = result.directions[k] / np.linalg.norm(result.directions[k])
        norm = float(np.linalg.norm(h0[labels == k].mean(0) - anchor))
        with add_to_residual(model, layer, torch.tensor(unit * norm, dtype=loaded.dtype)):
            induce[name] = style_shares(greedy_replies(model, tok, template, induce_rows, args.tokens), styles)
        with ablate_direction(model, torch.tensor(unit, dtype=loaded.dtype)):
            ablate[name] = {c: {"before": before[c], "after": own_style(greedy_replies(model, tok, template, rows, args.tokens), rows, styles)}
                            for c, rows in by_type.items()}
        print(f"{name}: induce {induce[name]}; ablate {ablate[name]}", flush=True)
    return {"layer": layer, "induce": induce, "ablate": ablate, "n_induce": len(induce_rows),
            "n_ablate": {c: len(r) for c, r in by_type.items()}}


def main(argv=None) -> int:
    args = parse_args(argv)
    settings = OrganismSettings()
    assigned = assign(load_prompts(settings.sources), settings)
    test = [a for a in assigned if a.split == "test"]
    planted = [a for c in settings.styles for a in _sample([a for a in test if a.category == c], args.per_type)]
    controls = [a for a in test if a.role == "harmless"]
    print(f"held-out planted prompts: {len(planted)} ({ {c: sum(a.category == c for a in planted) for c in settings.styles} }); "
          f"held-out everyday controls: {len(controls)}")
    results = {"args": vars(args), "n_planted": len(planted), "n_controls": len(controls), "models": {}}
    single_styles = {c: args.single_style for c in settings.styles}
    for who, name, styles in (("three-style organism", args.organism, settings.styles), ("base model", args.base, None),
                              ("single-style organism", args.single, single_styles)):
        if not name:
            continue
        results["models"][who] = run_model(who, name, planted, controls, styles, args)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2, default=_plain))
    print("\n| model | space | clusters | noise | ARI | NMI | ARI (clustered) |\n|---|---|---|---|---|---|---|")
    for who, r in results["models"].items():
        for space, s in r["spaces"].items():
            a = s["section"]["agreement"]
            print(f"| {who} | {space} | {s['section']['n_clusters']} | {s['section']['noise_share']:.2f} | {a['ari']:.3f} "
                  f"| {a['nmi']:.3f} | {a['ari_clustered']:.3f} |")
    print(f"\nwrote {args.out}")
    return 0


def _plain(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return str(value)


if __name__ == "__main__":
    raise SystemExit(main())
