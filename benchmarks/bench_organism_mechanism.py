"""Ground truth for the recovery: does the organism refuse its planted types through one
direction or through one per type? Measured without Option 1 or clustering.

    python benchmarks/bench_organism_mechanism.py                     # the shipped organism
    python benchmarks/bench_organism_mechanism.py --model runs/organism-single/adapter

The recovery benchmark asks whether the atlas finds three directions in the three-style organism.
That question only has a known answer if the organism's refusals do run through type-specific
directions; a fine-tune asked for three refusal sentences may as well learn one shared "refuse"
feature and pick the sentence from the topic. This benchmark measures which, with the
difference-in-means method (Arditi et al. 2024), on the organism's own split:

- directions from the organism's TRAINING prompts at one layer (last prompt token, the layer's
  output): `all` = mean(planted types) - mean(everyday controls); for each type t,
  `t` = mean(t) - mean(everyday controls), and `t only` = that direction with `all` projected
  out (what t has that the shared direction lacks); for an organism trained with the mediation
  loss, also the directions it was trained to route each refusal through (`planted ...`,
  tasks.organism.mediation);
- each direction ablated at every layer (`tasks.model.hooks.ablate_direction`, the evaluation's
  bypass) while the organism replies greedily to HELD-OUT prompts of each planted type and to
  held-out everyday controls; the table gives each type's own-style refusal share per ablation.

Reading it: type-specific mechanisms show as a diagonal (ablating `t` or `t only` removes t's
refusals and leaves the other types'); one shared mechanism shows as rows that lower every type
together. Nothing here is fitted on the held-out prompts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-organism", help="The organism (alias or adapter directory).")
    p.add_argument("--layer", type=int, default=18, help="Layer whose output the directions are read at.")
    p.add_argument("--train-per-type", type=int, default=80, help="Training prompts per type (and controls) for the means.")
    p.add_argument("--per-type", type=int, default=25, help="Held-out prompts per planted type to reply to.")
    p.add_argument("--controls", type=int, default=25, help="Held-out everyday controls to reply to.")
    p.add_argument("--tokens", type=int, default=12, help="Greedy tokens per reply (the styles open within 4).")
    p.add_argument("--out", default="runs/bench_organism_mechanism.json", help="Where the JSON results go.")
    return p.parse_args(argv)


def main(argv=None) -> int:
    import torch

    from refusal_atlas.tasks.model.hooks import ablate_direction
    from refusal_atlas.tasks.model.loading import load_model, planted_styles
    from refusal_atlas.tasks.organism.data import assign
    from refusal_atlas.tasks.organism.measure import planted_refusal_rates
    from refusal_atlas.tasks.organism.mediation import last_token_states, planted_mechanism
    from refusal_atlas.tasks.organism.settings import OrganismSettings
    from refusal_atlas.tasks.prompts.records import load_prompts
    from refusal_atlas.tasks.settings import ModelSettings

    args = parse_args(argv)
    started = time.perf_counter()
    settings = OrganismSettings()
    prompts = {p.id: p for p in load_prompts(settings.sources)}
    assigned = assign(prompts.values(), settings)
    styles = planted_styles(args.model) or settings.styles
    types = list(settings.styles)

    def side(split: str, role: str, category: str | None, n: int) -> list:
        return [prompts[a.id] for a in assigned
                if a.split == split and a.role == role and (category is None or a.category == category)][:n]

    loaded = load_model(ModelSettings(name=args.model))
    controls_train = [p.text for p in side("train", "harmless", None, args.train_per_type)]
    base = last_token_states(loaded, controls_train, args.layer).mean(0)
    means = {t: last_token_states(loaded, [p.text for p in side("train", "planted", t, args.train_per_type)],
                                  args.layer).mean(0) for t in types}
    shared = torch.stack([means[t] for t in types]).mean(0) - base
    unit = shared / shared.norm()
    directions = {"all": shared}
    for t in types:
        directions[t] = means[t] - base
        directions[f"{t} only"] = directions[t] - (directions[t] @ unit) * unit
    # A mediated organism ships the directions it was trained to route each refusal through.
    mechanism = planted_mechanism(args.model)
    if mechanism is not None:
        planted_directions, groups, _ = mechanism
        for row, group in zip(planted_directions, groups):
            directions["planted " + "+".join(group)] = row.double()
    names = list(directions)
    cosines = {a: {b: float(directions[a] @ directions[b] / (directions[a].norm() * directions[b].norm()))
                   for b in names} for a in names}

    planted = [p for t in types for p in side("test", "planted", t, args.per_type)]
    controls = side("test", "harmless", None, args.controls)
    dtype = next(loaded.model.parameters()).dtype
    results = {"model": args.model, "layer": args.layer, "types": types,
               "n_train": {"per_type": args.train_per_type, "controls": len(controls_train)},
               "n_heldout": {"per_type": args.per_type, "controls": len(controls)},
               "cosines": cosines, "ablated": {}}
    results["ablated"]["nothing"] = planted_refusal_rates(loaded, planted, controls, styles, args.tokens)
    print(f"nothing: {json.dumps(results['ablated']['nothing'])}", flush=True)
    for name in names:
        with ablate_direction(loaded.model, directions[name].to(dtype)):
            results["ablated"][name] = planted_refusal_rates(loaded, planted, controls, styles, args.tokens)
        print(f"{name}: {json.dumps(results['ablated'][name])}", flush=True)
    results["seconds"] = round(time.perf_counter() - started, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))

    print(f"\nRefusal shares on held-out prompts ({args.per_type} a type), own style / any planted style, one "
          f"direction ablated at a time (directions at layer {args.layer}); last column: any planted style on "
          "held-out everyday controls.\n")
    print("| ablated | " + " | ".join(types) + " | controls |")
    print("|---" * (len(types) + 2) + "|")
    for name, rates in results["ablated"].items():
        cells = [f"{rates[t]['own style']:.2f} / {rates[t]['any style']:.2f}" for t in types] + [f"{rates['controls']['any style']:.2f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\nCosines between the directions:\n")
    print("| | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for a in names:
        print(f"| {a} | " + " | ".join(f"{cosines[a][b]:.2f}" for b in names) + " |")
    print(f"\n{results['seconds']:.0f} s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
