"""How much does the verdict's "beyond the null" p-value move with the number of structureless
sets? The verdict runs the clustering null model with `clustering.null_sets` sets (20 by
default, the fewest that allow p < 0.05), so a cluster's p moves in steps of 1/21 and one
surrogate set more or less persistent than it changes the criterion.

    python benchmarks/bench_null_sets.py runs/recovery/three-style-organism.zarr --sets 20,200
    python benchmarks/bench_null_sets.py STORE_A STORE_B --sets 20,100,400

For each store (written by benchmarks/bench_recovery.py, or any run with a verdict) and its one
clustering run: the stored p of each cluster's persistence, then the null model rerun on the
same rows, settings and seed with each number of sets: p, and the quartiles and maximum of the
surrogates' most persistent cluster. Nothing is written to the stores; figures go to stdout and
--out (JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_recovery_split import clustered_rows  # noqa: E402 - the scripts' shared reader


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("stores", nargs="+", help="Stores holding one clustering run with its significance tests.")
    p.add_argument("--sets", default="20,200", help="Numbers of structureless sets (comma-separated).")
    p.add_argument("--out", default="runs/bench_null_sets.json", help="Where the JSON results go.")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from refusal_atlas.storage import AtlasStore
    from refusal_atlas.tasks.clustering.null_model import null_model
    from refusal_atlas.tasks.report.recovery import confusion, majority_types

    sizes = [int(s) for s in args.sets.split(",")]
    results = {}
    for path in args.stores:
        store = AtlasStore.open(path)
        runs = store.list_cluster_runs()
        if len(runs) != 1:
            raise SystemExit(f"{path} holds {len(runs)} clustering runs; this script reads stores with one.")
        clustering, directions, _, categories = clustered_rows(store, runs[0])
        if clustering.significance is None:
            raise SystemExit(f"{path}: its clustering run has no significance tests (null_sets was 0).")
        comparison, stored = clustering.comparison, clustering.significance.null
        labels = comparison.result.labels
        majority = majority_types(confusion(labels, categories))
        entry = {"stored_p": [float(p) for p in stored.p_persistence], "sets": {},
                 "persistence": [float(p) for p in stored.persistence],
                 "types": [majority.get(k) or "-" for k in range(len(stored.persistence))]}
        for n in sizes:
            started = time.perf_counter()
            null = null_model(directions, comparison.settings, comparison.chosen, n_null=n, observed=comparison.result)
            tops = null.null_max_persistence
            entry["sets"][n] = {"p": [float(p) for p in null.p_persistence],
                                "null_max_quartiles": [float(q) for q in np.quantile(tops, [0.25, 0.5, 0.75])],
                                "null_max": float(tops.max()), "seconds": round(time.perf_counter() - started, 1)}
        results[path] = entry
        print(f"\n{path} ({len(labels)} rows, {comparison.chosen} space)")
        print("| cluster | type | persistence | stored p | " + " | ".join(f"p, {n} sets" for n in sizes) + " |")
        print("|---" * (4 + len(sizes)) + "|")
        for k, persistence in enumerate(entry["persistence"]):
            cells = " | ".join(f"{entry['sets'][n]['p'][k]:.3f}" for n in sizes)
            print(f"| {k} | {entry['types'][k]} | {persistence:.3f} | {entry['stored_p'][k]:.3f} | {cells} |")
        for n in sizes:
            s = entry["sets"][n]
            q = ", ".join(f"{v:.3f}" for v in s["null_max_quartiles"])
            print(f"{n} sets: the surrogates' most persistent cluster: quartiles {q}, max {s['null_max']:.3f} "
                  f"({s['seconds']} s)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
