"""How much does the recovery reading depend on the clustering setting and on the draw of prompts?

    python benchmarks/bench_recovery_sensitivity.py \
        --heldout runs/recovery/three-style-organism.zarr \
        --choice runs/recovery-settings-validation/validation.zarr --out runs/bench_recovery_sensitivity.json

This benchmark chooses nothing: the recovery benchmark's setting is the one the settings sweep
(bench_recovery_settings.py) picks, and it stays so whatever is printed here. It reads two stores
that already hold the organism's per-prompt directions at one layer: the recovery benchmark's
store of the held-out planted prompts and the settings sweep's store of the prompts the setting is
chosen on (its training-side or validation prompts: the "choice" side).
For each store, each seed of the verdict's discovery / held-out split (ClusterSettings.split_seed),
and each setting of the sweep's grid, it clusters the discovery-side planted prompts by the
library's own steps and scores the partition against the planted types (ARI, noise as one group,
as the recovery section counts it). Then:

1. the rank correlation over the grid between the choice side's ARI and the test side's, both
   averaged over the split seeds: does the choice side predict the test side?
2. for named settings (the deployed one, the defaults), the spread of the ARI over split seeds on
   each side: is one reading a typical draw, or a lucky or unlucky one?
3. a supervised reference the clustering cannot beat by much: each discovery prompt given the
   planted type whose centroid (of the other prompts' residual-space directions, labels used) is
   nearest. Its ARI is how far apart the types lie at this layer, with no clustering involved.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_recovery_settings import FITTED, GRID, embeddings  # noqa: E402 - the scripts' shared grid

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--heldout", default="runs/recovery/three-style-organism.zarr",
                   help="The recovery benchmark's store (held-out planted prompts).")
    p.add_argument("--choice", default="runs/recovery-settings-validation/validation.zarr",
                   help="The settings sweep's store (the prompts the setting is chosen on).")
    p.add_argument("--split-seeds", type=int, default=20, help="Seeds 0..N-1 of the discovery / held-out split.")
    p.add_argument("--out", default="runs/bench_recovery_sensitivity.json", help="Where the JSON results go.")
    return p.parse_args(argv)


def key_of(settings: dict) -> tuple:
    return tuple(settings[k] for k in GRID)


def grid_aris(store_uri: str, split_seeds: int) -> tuple[dict[tuple, list[float]], list[float], list[int]]:
    """({setting: [ARI per split seed]}, [supervised reference ARI per split seed], [rows per seed])."""
    import itertools

    from refusal_atlas.storage import AtlasStore
    from refusal_atlas.tasks.clustering.hdbscan_fit import fit_and_assign
    from refusal_atlas.tasks.report.recovery import agreement
    from refusal_atlas.tasks.settings import ClusterSettings

    store = AtlasStore.open(store_uri)
    ds = store.to_xarray(done_only=True)
    out: dict[tuple, list[float]] = {}
    reference, sizes = [], []
    for seed in range(split_seeds):
        base = ClusterSettings(split_seed=seed, bootstraps=0)
        vectors, types = discovery_vectors(store, ds, base)
        keep, views = embeddings(vectors, GRID["pca_dim"], base.seed)
        types = types[np.asarray(keep)]
        sizes.append(int(types.size))
        reference.append(nearest_centroid_ari(residual_rows(vectors), types))
        for values in itertools.product(*FITTED.values()):
            change = dict(zip(FITTED, values))
            settings = base.model_copy(update=change)
            for space in GRID["space"]:
                labels = fit_and_assign(views[space, settings.pca_dim], settings, 1)[1]
                out.setdefault(key_of({**change, "space": space}), []).append(
                    agreement(list(labels), list(types))["ari"])
    return out, reference, sizes


def discovery_vectors(store, ds, base) -> tuple[np.ndarray, np.ndarray]:
    """The discovery-side rows' directions [n, D] at the clustering's layer, and their planted
    types [n], for the split that `base` (a ClusterSettings) draws."""
    from refusal_atlas.tasks.clustering.geometry import select_layer
    from refusal_atlas.tasks.clustering.store_run import discovery_rows

    rows = discovery_rows(ds, base)
    vectors = np.asarray(select_layer(ds["direction"].data[rows], store.layers, base.layer, None)[0])
    return vectors, np.asarray(ds["category"].values, dtype=object)[rows]


def residual_rows(vectors: np.ndarray) -> np.ndarray:
    """The kept rows [n, D] in the clustering's residual space, by the library's own steps."""
    from refusal_atlas.tasks.clustering.geometry import common_direction, unit_rows
    from refusal_atlas.tasks.clustering.spaces import space_rows

    unit, _ = unit_rows(vectors)
    return np.asarray(space_rows(unit, "residual", common_direction(unit)[0]), dtype=np.float64)


def nearest_centroid_ari(x: np.ndarray, types: np.ndarray) -> float:
    """ARI of the partition that gives each residual-space unit row x [n, D] the planted type
    whose centroid of the other rows is nearest by cosine."""
    from sklearn.metrics import adjusted_rand_score

    names = sorted(set(types.tolist()))
    sums = np.stack([x[types == t].sum(0) for t in names])  # [T, D]
    counts = np.array([(types == t).sum() for t in names])
    own = np.array([names.index(t) for t in types])
    scores = np.empty((x.shape[0], len(names)))
    for j in range(len(names)):
        # Leave the row itself out of its own type's centroid, so the reference is not flattered.
        centroid = sums[j][None, :] - np.where(own[:, None] == j, x, 0.0)
        size = counts[j] - (own == j)
        centroid = centroid / size[:, None]
        scores[:, j] = np.einsum("nd,nd->n", x, centroid) / np.linalg.norm(centroid, axis=1)
    return float(adjusted_rand_score(types, np.argmax(scores, axis=1)))


def spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def summary(values: list[float]) -> dict:
    v = np.asarray(values, dtype=float)
    return {"median": float(np.median(v)), "q10": float(np.quantile(v, 0.1)), "q90": float(np.quantile(v, 0.9)),
            "least": float(v.min()), "most": float(v.max()), "seed0": float(v[0]),
            "share_at_least_0.9": float((v >= 0.9).mean())}


def main(argv=None) -> int:
    from refusal_atlas.tasks.settings import ClusterSettings

    args = parse_args(argv)
    start = time.monotonic()
    deployed = json.loads((ROOT / "deployments" / "recovery.json").read_text())["clustering"]
    defaults = ClusterSettings().model_dump()
    named = {"deployed (recovery.json)": key_of({**defaults, **deployed}), "defaults": key_of(defaults)}
    sides = {}
    for side, uri in (("choice", args.choice), ("heldout", args.heldout)):
        aris, reference, sizes = grid_aris(uri, args.split_seeds)
        sides[side] = {"store": uri, "aris": aris, "reference": reference, "sizes": sizes}
        print(f"{side}: {uri}, {sizes[0]} discovery prompts at split seed 0 (range {min(sizes)} to {max(sizes)})")
    keys = sorted(sides["choice"]["aris"], key=str)
    choice_mean = [float(np.mean(sides["choice"]["aris"][k])) for k in keys]
    test_mean = [float(np.mean(sides["heldout"]["aris"][k])) for k in keys]
    test_seed0 = [sides["heldout"]["aris"][k][0] for k in keys]
    rho = spearman(choice_mean, test_mean)
    print(f"\n1. over the {len(keys)} settings: Spearman rho between choice-side and held-out ARI "
          f"(each averaged over {args.split_seeds} split seeds) = {rho:.2f}")
    print(f"   held-out ARI at split seed 0: {sum(a >= 0.9 for a in test_seed0)} of {len(keys)} settings "
          f"at 0.9 or more; averaged over the seeds: {sum(a >= 0.9 for a in test_mean)}")
    best_choice = keys[int(np.argmax(choice_mean))]
    print(f"   the best on the choice side averaged over seeds: {dict(zip(GRID, best_choice))} "
          f"(choice side {max(choice_mean):.3f}, held out {test_mean[keys.index(best_choice)]:.3f}); "
          "reported, not adopted")
    print("\n2. ARI over split seeds (noise as one group)")
    print("| setting | side | median | 10% to 90% | least | most | seed 0 | share >= 0.9 |")
    print("|---|---|---|---|---|---|---|---|")
    named_out = {}
    for name, key in named.items():
        for side in ("choice", "heldout"):
            s = summary(sides[side]["aris"][key])
            named_out.setdefault(name, {"setting": dict(zip(GRID, key))})[side] = s
            print(f"| {name} | {side} | {s['median']:.3f} | {s['q10']:.3f} to {s['q90']:.3f} | {s['least']:.3f} "
                  f"| {s['most']:.3f} | {s['seed0']:.3f} | {s['share_at_least_0.9']:.2f} |")
    print("\n3. supervised reference (nearest planted-type centroid, labels used; not a clustering)")
    for side in ("choice", "heldout"):
        s = summary(sides[side]["reference"])
        print(f"   {side}: median ARI {s['median']:.3f} (10% to 90%: {s['q10']:.3f} to {s['q90']:.3f})")
    out = {
        "split_seeds": args.split_seeds, "spearman_choice_vs_heldout": rho, "named": named_out,
        "best_choice_mean": {"setting": dict(zip(GRID, best_choice)), "choice": max(choice_mean),
                               "heldout": test_mean[keys.index(best_choice)]},
        "grid": [{"setting": dict(zip(GRID, k)), "choice": sides["choice"]["aris"][k],
                  "heldout": sides["heldout"]["aris"][k]} for k in keys],
        "reference": {side: sides[side]["reference"] for side in sides},
        "stores": {side: sides[side]["store"] for side in sides},
        "seconds": round(time.monotonic() - start, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2, default=str))
    print(f"\nwrote {args.out} ({out['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
