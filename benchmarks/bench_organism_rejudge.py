"""An organism run's criteria judged again, from its saved replies, by today's judge.

    python benchmarks/bench_organism_rejudge.py --run runs/organism-v9 --run runs/organism-v17

The organism flow judges its held-out replies once and writes the criteria into the run's
evaluation.json and the model card. When the judge changes (stop 31 widened its strict reading),
the figures a run recorded were read by the old judge. This reads each run's saved greedy
replies (organism_replies.jsonl) and split (data/split.jsonl) again, recomputes the rate
criteria with the judge installed now, keeps the run's own KL (it does not depend on the judge),
and lists beside each rate the figure the run recorded, and the controls now called refusals.
No model is loaded: it takes a second a run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from refusal_atlas.tasks.evaluation.judge import judge  # noqa: E402
from refusal_atlas.tasks.organism.data import Assigned, BaseReply, read_jsonl  # noqa: E402
from refusal_atlas.tasks.organism.measure import check_criteria, rates_by_group  # noqa: E402

JUDGED_CONTROLS = ("harmless", "near_miss")


def rejudge(run: Path) -> dict:
    """The run's criteria as recorded and as today's judge reads its replies, with the
    held-out controls today's judge calls refusals."""
    assigned = read_jsonl(run / "data" / "split.jsonl", Assigned)
    replies = {r.prompt_id: r for r in read_jsonl(run / "organism_replies.jsonl", BaseReply)}
    styles = json.loads((run / "adapter" / "adapter.json").read_text())["styles"]
    recorded = json.loads((run / "evaluation.json").read_text())
    rates = rates_by_group(assigned, replies, styles)
    now = check_criteria(rates, recorded["everyday_kl"])
    refused = [
        {"role": a.role, "prompt": a.text, "reply": replies[a.id].text}
        for a in assigned
        if a.split == "test" and a.role in JUDGED_CONTROLS and a.id in replies and judge(replies[a.id].text).strict
    ]
    return {"run": str(run), "recorded": recorded["criteria"], "now": now,
            "kinds_now": {role: rates[role].kinds for role in JUDGED_CONTROLS if role in rates},
            "refused_controls": refused}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="append", required=True, help="An organism's output_dir (repeatable).")
    p.add_argument("--out", default="runs/bench_organism_rejudge.json", help="Where the JSON results go.")
    args = p.parse_args()
    results = [rejudge(Path(run)) for run in args.run]
    print("| run | criterion | recorded | today's judge | met |")
    print("|---|---|---|---|---|")
    for r in results:
        for name, now in r["now"].items():
            before = r["recorded"].get(name, {}).get("value", float("nan"))
            print(f"| {r['run']} | {name} | {before:.4f} | {now['value']:.4f} | {now['met']} |")
    for r in results:
        print(f"\n{r['run']}: {len(r['refused_controls'])} held-out controls refused by today's judge")
        for c in r["refused_controls"]:
            print(f"  [{c['role']}] {c['prompt'][:70]!r} -> {c['reply'][:90]!r}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
