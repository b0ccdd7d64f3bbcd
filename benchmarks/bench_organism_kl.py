"""Where an organism's replies drift from the base model's: KL(base || organism) per reply position.

    python benchmarks/bench_organism_kl.py --run runs/organism                      # the run's own adapter
    python benchmarks/bench_organism_kl.py --run runs/organism --adapter smollm2-organism

The organism's criterion reads the mean over the first 16 positions of the base model's greedy
replies to held-out everyday requests (teacher-forced, so both models see the same text). The
mean hides where the drift sits: this script prints it per position, on the same prompts and
replies as the flow's evaluation (the run's split and base replies), with the evaluation's own
measure (tasks.organism.measure.kl_along_replies). It showed that the first position carried most
of the third organism's drift (2.54 nats there, 0.04 to 0.18 at each of the next 15), because its
controls trained that token on a hard greedy target.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from refusal_atlas.tasks.model.loading import load_model
from refusal_atlas.tasks.organism.data import Assigned, BaseReply
from refusal_atlas.tasks.organism.measure import kl_along_replies
from refusal_atlas.tasks.organism.pipeline import read_jsonl
from refusal_atlas.tasks.settings import ModelSettings


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="runs/organism", help="An organism run's output folder (its data/ is read).")
    p.add_argument("--adapter", default="", help="The organism to measure (default: the run's adapter/).")
    p.add_argument("--base", default="smollm2", help="The base model the replies came from.")
    p.add_argument("--tokens", type=int, default=16, help="Reply positions measured.")
    p.add_argument("--batch", type=int, default=16, help="Prompts per forward pass.")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    run = Path(args.run)
    adapter = args.adapter or str(run / "adapter")
    everyday = [a for a in read_jsonl(run / "data" / "split.jsonl", Assigned) if a.split == "test" and a.role == "harmless"]
    replies = {r.prompt_id: r for r in read_jsonl(run / "data" / "base_replies.jsonl", BaseReply)}
    base, organism = load_model(ModelSettings(name=args.base)), load_model(ModelSettings(name=adapter))
    with torch.no_grad():
        kl = kl_along_replies(base.model, organism.model, organism.tokenizer, organism.chat_template, everyday, replies,
                              args.tokens, args.batch)
    print(f"{adapter}: {len(everyday)} held-out everyday requests, KL(base || organism) per reply position (nats)")
    print(" ".join(f"{v:.3f}" for v in kl["per_position"]))
    print(json.dumps({"adapter": adapter, "mean": round(kl["mean"], 4), "per_position": kl["per_position"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
