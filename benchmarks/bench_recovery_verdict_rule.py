"""Choose the clustering on the validation prompts by what the verdict needs, not by ARI alone.

    python benchmarks/bench_recovery_settings.py --planted organism-validation \
        --runs runs/recovery-settings-validation --out runs/bench_recovery_settings_validation.json
    python benchmarks/bench_recovery.py --base "" --settings deployments/recovery.json \
        --planted organism-validation --runs runs/recovery-validation --out runs/bench_recovery_validation.json
    python benchmarks/bench_recovery_verdict_rule.py --sweep runs/bench_recovery_settings_validation.json \
        --store runs/recovery-validation/three-style-organism.zarr        # about 2 min a candidate on 2 cores

The settings sweep (bench_recovery_settings.py) scores each clustering setting by its median ARI
over random subsets, and many settings tie: at stop 37 sixteen were within 0.01 of the best. Its
pick (min_cluster_size 3) then lost a planted type to the clustering null on the validation prompts
and on the held-out split alike. This script is the rule that replaced it at stop 38, written down
before it ran; it reads only the validation prompts (not held out; at stop 38 the organism had
never trained on them, the one shipped since stop 40 does):

1. Candidates: residual space, eom selection, settings whose sweep score (the mean of their median
   ARI at sizes of at least --near) is within --within of the best.
2. On the verdict's discovery rows of a validation store (written by bench_recovery.py with
   --planted organism-validation; its clustering settings do not matter, its rows do), each
   candidate is clustered and tested as the verdict tests it: the null model and the bootstrap
   stability with --sets draws. It passes when it gives one cluster per planted type (three
   clusters, three different majority types), every one beyond the null (p < 0.05) and stable.
3. Passing candidates are ranked by the sweep's worst draw, then the sweep score, then the fewest
   fields changed from the atlas defaults. Candidates whose partition of these rows is identical
   are grouped: the held-out evaluation of one stands for all, and a group is led by its first.
4. (Not run here; the script prints the order.) The passing groups' leaders, in rank order, are
   evaluated in full by bench_recovery.py on organism-validation until one's verdict reads three
   directions, which is chosen (at most three evaluations; if none reads three, the one with the
   most directions, ties to the earlier). At stop 38: (8, 5, -) read 2 directions (the legal
   cluster beat 18 of 20 size-matched subsets by bypass, where 19 are needed), then (16, 8, 3),
   whose partition differs by one prompt, read 3 and was chosen.

Figures go to stdout and --out (JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
FIELDS = ("pca_dim", "min_cluster_size", "min_samples")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sweep", required=True, help="bench_recovery_settings.py's JSON on the validation prompts.")
    p.add_argument("--store", required=True,
                   help="A validation store written by bench_recovery.py (one clustering run).")
    p.add_argument("--within", type=float, default=0.01, help="Candidates: sweep score within this of the best.")
    p.add_argument("--near", type=int, default=150, help="Subset sizes the sweep score averages over (at least this).")
    p.add_argument("--sets", type=int, default=200, help="Null-model sets and stability bootstraps per candidate.")
    p.add_argument("--out", default="runs/bench_recovery_verdict_rule.json", help="Where the JSON results go.")
    return p.parse_args(argv)


def candidates(rows: list[dict], within: float, near: int) -> list[dict]:
    """The sweep's residual-space, eom settings within `within` of the best score, with their
    score (mean median ARI at sizes >= near), worst draw and fields changed from the defaults,
    ranked by worst draw, then score, then fewest changes."""
    from refusal_atlas.tasks.settings import ClusterSettings

    defaults = ClusterSettings()
    grouped: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["space"] == "residual" and r["selection"] == "eom" and r["size"] >= near:
            grouped.setdefault(tuple(r[k] for k in FIELDS), []).append(r)
    scored = [{"setting": dict(zip(FIELDS, key)),
               "score": round(float(np.mean([r["median_ari"] for r in rs])), 3),
               "worst": round(min(r["min_ari"] for r in rs), 3),
               "changed": sum(v != getattr(defaults, k) for k, v in zip(FIELDS, key))}
              for key, rs in grouped.items()]
    if not scored:
        raise SystemExit(f"the sweep has no residual-space eom rows at sizes >= {near}.")
    best = max(c["score"] for c in scored)
    kept = [c for c in scored if c["score"] >= best - within - 1e-9]
    return sorted(kept, key=lambda c: (-c["worst"], -c["score"], c["changed"]))


def verdict_side(directions, categories, settings, space: str, n_sets: int) -> dict:
    """One candidate's clustering of the rows with the verdict's null and stability tests."""
    from refusal_atlas.tasks.clustering.null_model import cluster_rows, null_model
    from refusal_atlas.tasks.clustering.stability import bootstrap_stability
    from refusal_atlas.tasks.report.recovery import confusion, supported_types

    observed = cluster_rows(directions, settings, space)
    table = confusion(observed.labels, categories)
    # Every cluster counted as if supported: one per planted type means none shared, none missing.
    types = supported_types(table, range(observed.n_clusters), table["types"])
    null = null_model(directions, settings, space, n_null=n_sets, observed=observed)
    stability = bootstrap_stability(directions, observed.labels, settings, space, n_bootstraps=n_sets)
    return {"labels": observed.labels, "clusters": observed.n_clusters, "types": types["majority_types"],
            "p": [round(float(v), 3) for v in null.p_persistence],
            "jaccard": [round(float(v), 3) for v in stability.median],
            "passes": bool(types["one_per_type"] and null.clusters_beyond_null().all() and stability.stable.all())}


def main(argv=None) -> int:
    from bench_recovery_split import clustered_rows
    from sklearn.metrics import adjusted_rand_score

    from refusal_atlas.storage import AtlasStore

    args = parse_args(argv)
    listed = candidates(json.loads(Path(args.sweep).read_text())["sweep"], args.within, args.near)
    store = AtlasStore.open(args.store)
    runs = store.list_cluster_runs()
    if len(runs) != 1:
        raise SystemExit(f"{args.store} holds {len(runs)} clustering runs; this script reads stores with one.")
    clustering, directions, _, categories = clustered_rows(store, runs[0])
    base, space = clustering.comparison.settings, clustering.comparison.chosen
    print(f"{len(listed)} candidates within {args.within} of the best sweep score; "
          f"{directions.shape[0]} discovery rows\n")
    print("| pca_dim | min_cluster_size | min_samples | score | worst draw | changed | clusters | p (null) "
          "| median Jaccard | passes | same partition as |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    partitions: list[tuple[str, np.ndarray]] = []
    for c in listed:
        started = time.perf_counter()
        tested = verdict_side(directions, categories, base.model_copy(update=c["setting"]), space, args.sets)
        labels = tested.pop("labels")
        name = "/".join(str(v) for v in c["setting"].values())
        c["same_as"] = next((n for n, seen in partitions if adjusted_rand_score(seen, labels) == 1.0), None)
        partitions.append((name, labels))
        c |= tested | {"seconds": round(time.perf_counter() - started, 1)}
        s = c["setting"]
        print(f"| {s['pca_dim']} | {s['min_cluster_size']} | {s['min_samples']} | {c['score']:.3f} | {c['worst']:.3f} "
              f"| {c['changed']} | {c['clusters']} | {c['p']} | {c['jaccard']} | {'yes' if c['passes'] else 'no'} "
              f"| {c['same_as'] or '-'} |", flush=True)
    # One evaluation per distinct partition among the passing candidates: the cluster directions,
    # hence the held-out evaluation, depend on the partition only. (A failing candidate can share
    # a passing one's partition: the null and stability tests depend on the settings too.)
    order, evaluated = [], []
    for c, (_, labels) in zip(listed, partitions):
        if c["passes"] and not any(adjusted_rand_score(seen, labels) == 1.0 for seen in evaluated):
            order.append(c["setting"])
            evaluated.append(labels)
    print("\nevaluate on organism-validation (bench_recovery.py), in this order, until one reads three "
          f"directions (at most three): {order[:3]}" if order else "\nno candidate passes; the current setting stays.")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"store": args.store, "candidates": listed, "order": order}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
