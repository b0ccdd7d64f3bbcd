"""Loading the default model: converting its GGUF file against reading the cached conversion,
side by side in one run.

    python benchmarks/bench_model_load.py [--repeats 3] [--model smollm2]

Each repeat loads the model three ways, each in a fresh child process (as a run, a Dask worker
or a test process would): with the cache off (`REFUSAL_ATLAS_CACHE=off`: parse and de-quantise
the GGUF), into an empty cache (convert, then save the conversion) and from that cache. The
time is `load_model` alone, measured inside the child; the child also prints the model's
fingerprint, which must be the same all three ways. Medians over the repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = """
import json, sys, time
from refusal_atlas.tasks.model.loading import load_model
from refusal_atlas.tasks.settings import ModelSettings
start = time.perf_counter()
loaded = load_model(ModelSettings(name=sys.argv[1]))
print(json.dumps({"seconds": time.perf_counter() - start, "fingerprint": loaded.fingerprint}))
"""


def _load(model: str, cache: str) -> dict:
    env = {**os.environ, "REFUSAL_ATLAS_CACHE": cache}
    done = subprocess.run([sys.executable, "-c", _CHILD, model], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="Loads of each kind (medians are quoted).")
    p.add_argument("--model", default="smollm2", help="A GGUF model: the default, or a .gguf path.")
    args = p.parse_args(argv)
    times: dict[str, list[float]] = {"GGUF, cache off": [], "GGUF, converted and cached": [], "from the cache": []}
    prints = set()
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="bench-load-") as cache:
            for kind, where in zip(times, ("off", cache, cache)):
                result = _load(args.model, where)
                times[kind].append(result["seconds"])
                prints.add(result["fingerprint"])
    print(f"model {args.model}, {args.repeats} repeats, load_model in a fresh process (median, all):")
    for kind, values in times.items():
        print(f"  {kind:28s} {statistics.median(values):6.2f} s   {[round(v, 2) for v in values]}")
    ratio = statistics.median(times["GGUF, cache off"]) / statistics.median(times["from the cache"])
    print(f"  cache off / from the cache: {ratio:.1f}x")
    print(f"  fingerprints: {sorted(prints)} ({'the same' if len(prints) == 1 else 'DIFFERENT'})")
    return 0 if len(prints) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
