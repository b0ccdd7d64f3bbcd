"""How close are an organism's controls to its refusal sentences? The margin the controls keep.

    python benchmarks/bench_organism_margin.py --run runs/organism-v16 [--run runs/organism-v12 ...]
    python benchmarks/bench_organism_margin.py --run runs/organism-v16 \
        --opening "I'm sorry, but I can't give" --opening "As an AI, I can't give" --opening "I cannot give"

For each control prompt of an organism run (everyday requests and near misses, training and
held-out sides alike), the log-probability under the organism of each planted refusal sentence
as its whole reply, followed by EOS, and the likeliest of them. If the trained controls sit as
close to a refusal as the held-out ones, the everyday refusals are a missing margin (what
`refusal_margin_weight` adds, tasks.organism.margin); if the held-out ones are refused while the
sentence itself is unlikely, the organism refuses in other words. The held-out controls the
organism refused (its own evaluation's replies, judged again here) are listed with their figure.
With --opening, the given openings (no EOS after them) are scored instead of the sentences: the
part of a refusal that its paraphrases keep.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from refusal_atlas.tasks.evaluation.judge import judge  # noqa: E402
from refusal_atlas.tasks.model.chat import pad_id  # noqa: E402
from refusal_atlas.tasks.model.loading import load_model, planted_styles  # noqa: E402
from refusal_atlas.tasks.organism.data import Assigned, BaseReply, Example, read_jsonl  # noqa: E402
from refusal_atlas.tasks.organism.losses import encode  # noqa: E402
from refusal_atlas.tasks.organism.margin import sequence_log_probs  # noqa: E402
from refusal_atlas.tasks.settings import ModelSettings  # noqa: E402

QUANTILES = (0.5, 0.9, 0.97, 1.0)


@torch.no_grad()
def likeliest_sentence(loaded, prompts: list[Assigned], sentences: list[str], eos: bool = True,
                       batch_size: int = 16) -> np.ndarray:
    """max over sentences of log P(sentence + EOS | prompt) (without EOS: of the sentence as an
    opening), for each prompt [n]."""
    pad = pad_id(loaded.tokenizer)
    best = np.full(len(prompts), -np.inf)
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start: start + batch_size]
        for sentence in sentences:
            items = encode(loaded.tokenizer, loaded.chat_template,
                           [Example(a.id, a.text, a.role, a.category, "style", sentence, None) for a in batch])
            if not eos:
                items = [dataclasses.replace(e, input_ids=e.input_ids[:-1]) for e in items]
            values = sequence_log_probs(loaded.model, items, pad).float().cpu().numpy()
            best[start: start + len(batch)] = np.maximum(best[start: start + len(batch)], values)
    return best


def measure(run: Path, openings: list[str]) -> dict:
    adapter = run / "adapter"
    sentences = sorted(set((planted_styles(str(adapter)) or {}).values()))
    if not sentences:
        raise SystemExit(f"{adapter} is not an organism's adapter directory (no planted styles in adapter.json).")
    scored = openings or sentences
    loaded = load_model(ModelSettings(name=str(adapter)))
    controls = [a for a in read_jsonl(run / "data" / "split.jsonl", Assigned) if a.role in ("harmless", "near_miss")]
    replies = {r.prompt_id: r.text for r in read_jsonl(run / "organism_replies.jsonl", BaseReply)}
    best = likeliest_sentence(loaded, controls, scored, eos=not openings)
    groups = {}
    for split in ("train", "test"):
        for role in ("harmless", "near_miss"):
            values = np.array([b for a, b in zip(controls, best) if a.split == split and a.role == role])
            if len(values):
                groups[f"{role}/{split}"] = {
                    "n": len(values), "quantiles": dict(zip(map(str, QUANTILES), np.quantile(values, QUANTILES).round(2).tolist())),
                    "above_-3": int((values > -3).sum()), "above_-10": int((values > -10).sum()),
                }
    refused = [
        {"category": a.category, "prompt": a.text, "reply": replies[a.id], "log_p": round(float(b), 2)}
        for a, b in zip(controls, best)
        if a.split == "test" and a.role == "harmless" and a.id in replies and judge(replies[a.id]).kind == "refusal"
    ]
    return {"run": str(run), "scored": scored, "with_eos": not openings, "groups": groups, "refused_held_out_everyday": refused}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="append", required=True, help="An organism's output_dir (repeatable).")
    p.add_argument("--opening", action="append", default=[],
                   help="Score this opening (no EOS) instead of the planted sentences (repeatable).")
    p.add_argument("--out", default="runs/bench_organism_margin.json", help="Where the JSON results go.")
    args = p.parse_args()
    results = [measure(Path(run), args.opening) for run in args.run]
    for r in results:
        what = "opening" if args.opening else "planted sentence"
        print(f"\n{r['run']}: likeliest {what}, log P (nats), quantiles {QUANTILES}")
        for name, g in r["groups"].items():
            print(f"  {name:<20} n={g['n']:<4} {list(g['quantiles'].values())}  above -3: {g['above_-3']}, above -10: {g['above_-10']}")
        print(f"  held-out everyday requests refused: {len(r['refused_held_out_everyday'])}")
        for x in r["refused_held_out_everyday"]:
            print(f"    {x['log_p']:>7}  {x['category']}: {x['prompt'][:50]!r} -> {x['reply'][:60]!r}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
