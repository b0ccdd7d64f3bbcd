"""The engine with float32 against bfloat16 weights on the CPU, side by side in one run.

Issue 17 asks for twice the engine's rate at the same settings; the FLOP account in BENCHMARKS.md
leaves no exact cut, and this CPU has avx512_bf16, so the obvious inexact one is bfloat16 weights
(f is still computed in float32, as on CUDA). This measures what it would give: the upper-layers
engine (the default) on the same prompts, layers and K, once with each dtype, alternating, and
the cosine between the two engines' directions for every prompt and layer (the issue's bar
against the reference is 0.999).

    python benchmarks/bench_engine_dtype.py --prompts 16 --repeats 3

About 2 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.mixed_prompts import mixed_sources  # noqa: E402
from refusal_atlas.tasks.engine.direction_engine import DirectionEngine  # noqa: E402
from refusal_atlas.tasks.model.loading import get_model  # noqa: E402
from refusal_atlas.tasks.prompts.records import load_prompts  # noqa: E402
from refusal_atlas.tasks.settings import DirectionSettings, EngineSettings, ModelSettings  # noqa: E402

DTYPES = ("float32", "bfloat16")


def cosines(a_results, b_results, n_layers: int) -> list[float]:
    """Cosine between two runs' directions [D] for every prompt and layer both computed."""
    out = []
    for a, b in zip(a_results, b_results):
        for i in range(n_layers):
            if np.isfinite(a.direction[i]).all() and np.isfinite(b.direction[i]).all():
                out.append(float(np.dot(a.direction[i], b.direction[i])
                                 / np.linalg.norm(a.direction[i]) / np.linalg.norm(b.direction[i])))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--layers", type=int, nargs="+", default=[12, 18, 24])
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print("command: python benchmarks/bench_engine_dtype.py " + " ".join(sys.argv[1:]))

    texts = list(load_prompts(mixed_sources(args.prompts)).texts)
    settings = DirectionSettings(layers=args.layers, steps=args.steps)
    engines = {}
    for dtype in DTYPES:
        engines[dtype] = DirectionEngine(get_model(ModelSettings(dtype=dtype)), settings,
                                         EngineSettings(max_batch=args.max_batch))
        engines[dtype].compute_many(texts[:2])  # warm-up: first-call allocations and kernel choices

    seconds: dict[str, list[float]] = {dtype: [] for dtype in DTYPES}
    results = {}
    for _ in range(args.repeats):
        for dtype, engine in engines.items():  # alternating, so drift in the machine hits both
            start = time.perf_counter()
            results[dtype] = engine.compute_many(texts)
            seconds[dtype].append(time.perf_counter() - start)

    median = {dtype: statistics.median(s) for dtype, s in seconds.items()}
    cos = cosines(results["float32"], results["bfloat16"], len(args.layers))
    print("| weights | median s for the prompts | prompts/s | runs (s) |")
    print("|---|---|---|---|")
    for dtype in DTYPES:
        print(f"| {dtype} | {median[dtype]:.1f} | {args.prompts / median[dtype]:.3f} | "
              f"{', '.join(f'{s:.1f}' for s in seconds[dtype])} |")
    print(f"bfloat16 against float32: {median['float32'] / median['bfloat16']:.2f}x; cosine between their "
          f"directions min {min(cos):.4f}, median {statistics.median(cos):.4f} over {len(cos)} prompt-layers")


if __name__ == "__main__":
    main()
