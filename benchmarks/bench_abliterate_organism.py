"""Abliteration against the organism's planted refusals: does removing the atlas's directions
from the weights stop the planted refusals, and what does it leave?

    make demo                                              # an atlas store of the organism: runs/demo.zarr
    python benchmarks/bench_abliterate_organism.py --store runs/demo.zarr

The directions are the store's cluster directions of its last clustering run (what the atlas
found on the organism; `--direction NAME` picks others, `refusal-atlas export STORE` lists
them). They go out through the export path a user takes (a safetensors file with its header,
read back), and `write_abliterated` (what `refusal-atlas abliterate` runs) orthogonalises a
copy of the organism's weights against their span. Before and after, on held-out prompts that
the store never saw: each planted type's own-style refusal share, the share of replies opening
with any planted style, the strict judge's refusal rate; and the same on held-out controls.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", default="runs/demo.zarr", help="An atlas store computed on the organism.")
    p.add_argument("--direction", nargs="*", default=None, help="Direction names (default: the last run's clusters).")
    p.add_argument("--model", default="smollm2-organism", help="The organism (alias or adapter directory).")
    p.add_argument("--per-type", type=int, default=30, help="Held-out planted prompts per type.")
    p.add_argument("--controls", type=int, default=30, help="Held-out controls.")
    p.add_argument("--tokens", type=int, default=20, help="Greedy tokens per reply.")
    p.add_argument("--out", default="runs/bench_abliterate_organism.json", help="Where the JSON results go.")
    return p.parse_args(argv)


def main(argv=None) -> int:
    from refusal_atlas.storage import AtlasStore
    from refusal_atlas.tasks.export import files, selection
    from refusal_atlas.tasks.export.abliterate import write_abliterated
    from refusal_atlas.tasks.model.loading import load_model, planted_styles
    from refusal_atlas.tasks.organism.measure import planted_refusal_rates
    from refusal_atlas.tasks.prompts.records import load_prompts
    from refusal_atlas.tasks.settings import ModelSettings

    args = parse_args(argv)
    store = AtlasStore.open(args.store)
    run = store.list_cluster_runs()[-1]
    names = args.direction or [n for n in selection.offered(store) if n.startswith(f"{run}.cluster-")]
    if not names:
        print(f"{args.store}'s run {run} found no clusters: nothing to abliterate.", file=sys.stderr)
        return 2
    styles = planted_styles(args.model)
    seen = set(str(t) for t in store.to_xarray(done_only=False)["text"].values)
    planted = [p for p in load_prompts(["organism-planted"]) if p.text not in seen]
    controls = [p for p in load_prompts(["organism-controls"]) if p.text not in seen][: args.controls]
    planted = [p for c in styles for p in [q for q in planted if q.category == c][: args.per_type]]
    organism = load_model(ModelSettings(name=args.model))
    with tempfile.TemporaryDirectory() as tmp:
        files.export_directions(store, [selection.select(store, n) for n in names], Path(tmp) / "export",
                                "llama", gguf=False)
        directions, info = files.load_directions([f"{Path(tmp) / 'export' / 'directions.safetensors'}:{n}"
                                                  for n in names])
        summary = write_abliterated(organism, directions, info, Path(tmp) / "model", args.model)
        abliterated = load_model(ModelSettings(name=str(Path(tmp) / "model")))
        results = {"store": args.store, "directions": names, "rank": summary["rank"],
                   "n_planted": len(planted), "n_controls": len(controls)}
        for who, loaded in (("before", organism), ("after", abliterated)):
            results[who] = planted_refusal_rates(loaded, planted, controls, styles, args.tokens)
            print(f"{who}: {json.dumps(results[who])}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"\n| group | measure | before | after |\n|---|---|---|---|")
    for group, measures in results["before"].items():
        for measure, value in measures.items():
            print(f"| {group} | {measure} | {value:.3f} | {results['after'][group][measure]:.3f} |")
    print(f"\nabliterated against {names} (rank {summary['rank']}); wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
