"""How well do the planted directions separate each type from everyday requests, in the base model?

    python benchmarks/bench_organism_directions.py --run runs/organism-v17 [--shrinkage 1 0.3 0.1]

The mediation loss makes an organism refuse a planted type through one direction at the planted
layer, so a control that projects onto that direction like the type's prompts do is one the
organism is trained, in effect, to refuse. This measures, on the base model and the run's
held-out prompts (the split in data/split.jsonl), for each planted type and each shrinkage
(1: the difference in means, the shipped recipe; below 1: whitened by the pooled covariance,
tasks.organism.mediation.whitened_differences): the AUC of the projection, the type's held-out
prompts against the held-out everyday requests; how many everyday requests project above the
type's 10th percentile; and how many of those the run's organism refused (today's judge).
Directions are measured on the training side only, as the organism flow measures them.
About 3 minutes on 2 CPU cores (one pass of SmolLM2 over the run's prompts).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from refusal_atlas.tasks.evaluation.judge import judge  # noqa: E402
from refusal_atlas.tasks.model.loading import load_model  # noqa: E402
from refusal_atlas.tasks.organism.data import Assigned, BaseReply, read_jsonl  # noqa: E402
from refusal_atlas.tasks.organism.mediation import (  # noqa: E402
    last_token_states, load_directions, symmetric_orthonormal, whitened_differences,
)
from refusal_atlas.tasks.settings import ModelSettings  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="An organism's output_dir (its split, replies and planted layer).")
    p.add_argument("--base", default="smollm2", help="The base model the organism was trained from.")
    p.add_argument("--shrinkage", type=float, nargs="+", default=[1.0, 0.3, 0.1], help="Shrinkages to compare.")
    p.add_argument("--out", default="runs/bench_organism_directions.json", help="Where the JSON results go.")
    args = p.parse_args()
    run = Path(args.run)
    _, groups, layer = load_directions(run / "data" / "planted_directions.safetensors")
    assigned = read_jsonl(run / "data" / "split.jsonl", Assigned)
    replies = {r.prompt_id: r.text for r in read_jsonl(run / "organism_replies.jsonl", BaseReply)}
    loaded = load_model(ModelSettings(name=args.base))
    torch.set_grad_enabled(False)

    def states(split: str, role: str, category: str | None = None) -> tuple[torch.Tensor, list[Assigned]]:
        rows = [a for a in assigned if a.split == split and a.role == role and category in (None, a.category)]
        return last_token_states(loaded, [a.text for a in rows], layer), rows

    train_controls, _ = states("train", "harmless")
    test_controls, rows = states("test", "harmless")
    refused = np.array([a.id in replies and judge(replies[a.id]).strict for a in rows])
    train_types = [torch.cat([states("train", "planted", c)[0] for c in group]) for group in groups]
    test_types = [torch.cat([states("test", "planted", c)[0] for c in group]) for group in groups]
    results = []
    print(f"{run}: layer {layer}, {len(rows)} held-out everyday requests, {int(refused.sum())} refused by the organism")
    print("| shrinkage | type | AUC, type vs everyday | everyday above the type's 10th percentile | of them refused |")
    print("|---|---|---|---|---|")
    for shrinkage in args.shrinkage:
        directions = symmetric_orthonormal(whitened_differences(train_types, train_controls, shrinkage))
        for k, group in enumerate(groups):
            ctl = (test_controls @ directions[k]).numpy()
            own = (test_types[k] @ directions[k]).numpy()
            auc = roc_auc_score(np.r_[np.ones(len(own)), np.zeros(len(ctl))], np.r_[own, ctl])
            above = ctl > np.percentile(own, 10)
            row = {"shrinkage": shrinkage, "types": list(group), "auc": float(auc), "above": int(above.sum()),
                   "above_refused": int((above & refused).sum()), "n_everyday": len(ctl)}
            results.append(row)
            print(f"| {shrinkage:g} | {'+'.join(group)} | {auc:.3f} | {row['above']} of {len(ctl)} | {row['above_refused']} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"run": str(run), "layer": layer, "refused": int(refused.sum()),
                                          "rows": results}, indent=1))


if __name__ == "__main__":
    main()
