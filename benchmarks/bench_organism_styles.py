"""How the organism replies to sets of planted-type prompts: the ground truth each set gives.

    python benchmarks/bench_organism_styles.py --source organism-planted --source organism-validation \
        --source organism-fresh --out runs/bench_organism_styles.json

The recovery benchmark scores the atlas's clusters against the category each prompt was written
for. That is the planted answer only where the organism behaves as planted: a legal request it
refuses with the medical sentence, or answers, carries no legal refusal direction to find. This
reads the organism's greedy replies (24 tokens, enough for the longest planted sentence) to every
prompt of each source and reports, per source and written category, the share refused in the
category's own sentence, in another planted sentence, and not in any. No setting is chosen here.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-organism", help="The organism (a model name or adapter directory).")
    p.add_argument("--source", action="append", default=None,
                   help="A prompt source of planted-type prompts (repeatable; default organism-planted).")
    p.add_argument("--max-new-tokens", type=int, default=24, help="Greedy reply length.")
    p.add_argument("--out", default="runs/bench_organism_styles.json", help="Where the JSON results go.")
    return p.parse_args(argv)


def main(argv=None) -> int:
    from refusal_atlas.tasks.model.loading import load_model
    from refusal_atlas.tasks.organism.data import style_of
    from refusal_atlas.tasks.organism.measure import greedy_replies
    from refusal_atlas.tasks.organism.settings import OrganismSettings
    from refusal_atlas.tasks.prompts.records import load_prompts
    from refusal_atlas.tasks.settings import ModelSettings

    args = parse_args(argv)
    styles = OrganismSettings().styles
    loaded = load_model(ModelSettings(name=args.model))
    results = {"model": args.model, "styles": styles, "sources": {}}
    print("| source | written as | n | own sentence | another planted sentence | none |")
    print("|---|---|---|---|---|---|")
    for source in args.source or ["organism-planted"]:
        start = time.monotonic()
        prompts = [p for p in load_prompts([source]) if p.category in styles]
        replies = greedy_replies(loaded.model, loaded.tokenizer, loaded.chat_template, prompts, args.max_new_tokens)
        table = {}
        for category in styles:
            found = [style_of(r.text, styles) for p, r in zip(prompts, replies) if p.category == category]
            counts = Counter("own" if f == category else "none" if f is None else "other" for f in found)
            table[category] = {"n": len(found), **{k: counts[k] / len(found) for k in ("own", "other", "none")},
                               "styles": dict(Counter(f or "none" for f in found))}
            row = table[category]
            print(f"| {source} | {category} | {row['n']} | {row['own']:.3f} | {row['other']:.3f} | {row['none']:.3f} |")
        results["sources"][source] = {"seconds": round(time.monotonic() - start, 1), "categories": table,
                                      "replies": [{"prompt": p.text, "category": p.category, "reply": r.text}
                                                  for p, r in zip(prompts, replies)]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2, ensure_ascii=False))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
