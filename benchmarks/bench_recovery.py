"""Recovery benchmark: does the atlas find the refusal types planted in the model organism?

    python benchmarks/bench_recovery.py                                        # three-style organism and the base model
    python benchmarks/bench_recovery.py --single runs/organism-single/adapter   # and the single-style organism
    python benchmarks/bench_recovery.py --settings deployments/recovery.json \
        --single runs/organism-single/adapter                                   # all three with the recovery settings
    python benchmarks/bench_recovery.py --base "" --settings deployments/recovery.json \
        --planted organism-fresh --runs runs/recovery-fresh                    # the second held-out set
    python benchmarks/bench_recovery.py --single runs/organism-single/adapter --effect-scale log_odds \
        --out runs/bench_recovery_logodds.json                                  # the verdict on the log-odds

Each model gets one run of the `refusal_atlas` flow with the demo's settings
(deployments/demo.json: the organism's held-out planted-type prompts and controls, which no
organism trained on, and the evaluation's verdict), into a store of its own under runs/. No
setting is chosen on held-out prompts: the demo's settings are the defaults but for the
prompt sample, one layer and the cheaper evaluation the demo needs on a CPU.

Reported per model: the verdict with its reason; clusters against the planted types (ARI,
NMI, confusion table, tasks.report.recovery) on the clustered discovery prompts; and for the
organisms the report's recovery section (the style each cluster direction induces on held-out
controls, and what ablating it does to each planted style). The base model planted nothing:
what do its directions give on the same prompts? The single-style organism refuses all three
types with one sentence: one direction or three? Figures go to stdout and --out (JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEMO_SETTINGS = ROOT / "deployments" / "demo.json"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--organism", default="smollm2-organism", help="The three-style organism ('' to skip).")
    p.add_argument("--base", default="smollm2", help="The base model, for the planted-nothing comparison ('' to skip).")
    p.add_argument("--single", default="", help="The single-style organism's adapter directory ('' to skip).")
    p.add_argument("--settings", default=str(DEMO_SETTINGS), help="AtlasSettings JSON every model runs with.")
    p.add_argument("--effect-scale", default="", choices=["", "f", "log_odds"],
                   help="Override the settings' evaluation.effect_scale (the verdict's scale; '' keeps it).")
    p.add_argument("--planted", default="",
                   help="Run on these planted-type prompts (a prompt source, e.g. organism-fresh, the second "
                        "held-out set) in place of the settings' 'organism-planted'; '' keeps the settings' own.")
    p.add_argument("--runs", default="runs/recovery", help="Folder of the stores and reports, one per model.")
    p.add_argument("--out", default="runs/bench_recovery.json", help="Where the JSON results go.")
    return p.parse_args(argv)


def swap_planted(prompts: list, planted: str) -> list:
    """The settings' prompt sources with the held-out planted prompts ('organism-planted')
    replaced by another source of planted-type prompts, its options (limit, seed) kept."""
    from refusal_atlas.tasks.prompts.sources import parse_source

    if not any(source.path == "organism-planted" for source in prompts):
        raise SystemExit(f"--planted {planted}: the settings read no 'organism-planted' prompts to replace; "
                         "give settings that do (deployments/recovery.json) or leave --planted out.")
    return [parse_source(planted).model_copy(update=source.model_dump(exclude={"path"}, exclude_unset=True))
            if source.path == "organism-planted" else source for source in prompts]


def run_model(who: str, name: str, args) -> dict:
    from refusal_atlas.flows.atlas import refusal_atlas
    from refusal_atlas.storage import AtlasStore
    from refusal_atlas.tasks.clustering.load import load_store_clustering
    from refusal_atlas.tasks.report.recovery import recovery_section
    from refusal_atlas.tasks.report.recovery_text import recovery_markdown
    from refusal_atlas.tasks.settings import AtlasSettings

    settings = AtlasSettings.model_validate_json(Path(args.settings).read_text())
    if args.effect_scale:
        settings = settings.model_copy(update={
            "evaluation": settings.evaluation.model_copy(update={"effect_scale": args.effect_scale})})
    if args.planted:
        settings = settings.model_copy(update={"prompts": swap_planted(settings.prompts, args.planted)})
    slug = who.replace(" ", "-")
    settings = settings.model_copy(update={
        "model": settings.model.model_copy(update={"name": name}),
        "store": str(Path(args.runs) / f"{slug}.zarr"),
        "report_dir": str(Path(args.runs) / f"{slug}.report"),
    })
    start = time.monotonic()
    result = refusal_atlas(settings)
    seconds = round(time.monotonic() - start, 1)
    store = AtlasStore.open(result["store"])
    clustering = load_store_clustering(store, result["clusters"]["run"])
    labels = clustering.comparison.result.labels
    categories = [str(c) for c in clustering.rows.categories]
    section = result.get("recovery") or recovery_section(
        labels.tolist(), categories, sorted(set(categories)), title=f"{who}: clusters against the planted types")
    verdict = result.get("verdict")
    print(f"\n# {who} ({name}): {seconds} s\n\n{verdict['headline'] if verdict else 'no verdict'}\n")
    print(recovery_markdown(section, level=2))
    return {"model": name, "seconds": seconds, "verdict": verdict, "section": section, "report": result["report"],
            "clusters": result["clusters"]}


def main(argv=None) -> int:
    args = parse_args(argv)
    results = {"settings": json.loads(Path(args.settings).read_text()), "models": {}}
    for who, name in (("three-style organism", args.organism), ("base model", args.base),
                      ("single-style organism", args.single)):
        if not name:
            continue
        results["models"][who] = run_model(who, name, args)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2, default=_plain))
    print("\n| model | verdict | clusters | noise | ARI | NMI | ARI (clustered) |\n|---|---|---|---|---|---|---|")
    for who, r in results["models"].items():
        s, a = r["section"], r["section"]["agreement"]
        kind = r["verdict"]["headline"].split(".")[0] if r["verdict"] else "none"
        print(f"| {who} | {kind} | {s['n_clusters']} | {s['noise_share']:.2f} | {a['ari']:.3f} | {a['nmi']:.3f} "
              f"| {a['ari_clustered']:.3f} |")
    print(f"\nwrote {args.out}")
    return 0


def _plain(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
