"""Engine against a naive loop on SmolLM2-135M-Instruct, side by side in one run.

The naive loop takes one prompt at a time and, at every gradient step, runs the full prompt
plus phrases forward and backward (tests/naive.py). The engine batches prompts, runs each
prefix once and feeds the phrases as one token tree. Both compute Option 1 at the same layers
with the same K; the cosine between their directions shows they compute the same thing.

    python benchmarks/bench_engine.py --prompts 32 --naive-prompts 8 --steps 8 --repeats 3

The naive loop runs on a subset (--naive-prompts) because it is slow; rates are per prompt.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from refusal_atlas.tasks.engine.direction_engine import DirectionEngine  # noqa: E402
from refusal_atlas.tasks.model.loading import get_model  # noqa: E402
from tests.naive import naive_option1  # noqa: E402
from benchmarks.mixed_prompts import mixed_sources  # noqa: E402
from refusal_atlas.tasks.prompts.records import load_prompts  # noqa: E402
from refusal_atlas.tasks.settings import DirectionSettings, EngineSettings, ModelSettings  # noqa: E402


class PeakRSS:
    """Samples this process's resident memory every 5 ms; peak above the level at entry."""

    def __enter__(self):
        self._proc = psutil.Process()
        self.start = self._proc.memory_info().rss
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def delta_mib(self) -> float:
        return (self.peak - self.start) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--naive-prompts", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--layers", type=int, nargs="+", default=[12, 18, 24])
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    print("command: python benchmarks/bench_engine.py " + " ".join(sys.argv[1:]))

    prompts = load_prompts(mixed_sources(args.prompts))
    half = args.prompts // 2
    texts = list(prompts.texts)
    # The naive subset takes harmful and harmless prompts alike.
    subset = texts[: args.naive_prompts // 2] + texts[half: half + args.naive_prompts - args.naive_prompts // 2]

    torch.set_num_threads(torch.get_num_threads())
    t0 = time.perf_counter()
    loaded = get_model(ModelSettings())
    print(f"model: {loaded.model_id} ({loaded.num_layers} layers, D={loaded.hidden_size}), "
          f"loaded in {time.perf_counter() - t0:.1f} s; device {loaded.device}, {torch.get_num_threads()} threads")
    settings = DirectionSettings(layers=args.layers, steps=args.steps)
    engine = DirectionEngine(loaded, settings, EngineSettings(max_batch=args.max_batch))
    print(f"prompts: {len(texts)} (engine), {len(subset)} (naive); layers {engine.layers}; K={args.steps}; "
          f"phrases {list(settings.phrases)}; max_batch {args.max_batch}")

    engine.compute_many(texts[:2])  # warm-up: first-call allocations and kernel choices
    engine_all, engine_sub, naive_sub, mem_engine, mem_naive = [], [], [], [], []
    for _ in range(args.repeats):
        with PeakRSS() as mem:
            start = time.perf_counter()
            results = engine.compute_many(texts)
            engine_all.append(time.perf_counter() - start)
        mem_engine.append(mem.delta_mib)
        start = time.perf_counter()
        sub_results = engine.compute_many(subset)
        engine_sub.append(time.perf_counter() - start)
        with PeakRSS() as mem:
            start = time.perf_counter()
            naive = [[naive_option1(loaded.model, engine.render(t), engine.target, layer, args.steps, settings.eta)
                      for layer in engine.layers] for t in subset]
            naive_sub.append(time.perf_counter() - start)
        mem_naive.append(mem.delta_mib)

    cosines = [
        float(np.dot(r.direction[i], n[i]["direction"].numpy()) / np.linalg.norm(r.direction[i]))
        for r, n in zip(sub_results, naive) for i in range(len(engine.layers))
    ]
    rate = {
        "engine_all": len(texts) / statistics.median(engine_all),
        "engine_subset": len(subset) / statistics.median(engine_sub),
        "naive_subset": len(subset) / statistics.median(naive_sub),
    }
    figures = {
        "prompts_per_s": rate,
        "speedup_same_prompts": rate["engine_subset"] / rate["naive_subset"],
        "speedup_full_set_vs_naive": rate["engine_all"] / rate["naive_subset"],
        "cosine_min": min(cosines),
        "cosine_median": statistics.median(cosines),
        "peak_rss_delta_mib": {"engine": statistics.median(mem_engine), "naive": statistics.median(mem_naive)},
        "failed_rows": sum(r.error is not None for r in results),
        "repeats": args.repeats,
    }
    print(f"\n{'':28}{'prompts/s':>12}{'s/prompt':>12}")
    for name, value in rate.items():
        print(f"{name:28}{value:12.3f}{1 / value:12.2f}")
    print(f"\nspeedup, same {len(subset)} prompts (median of {args.repeats}): {figures['speedup_same_prompts']:.1f}x")
    print(f"speedup, engine on all {len(texts)} vs naive rate: {figures['speedup_full_set_vs_naive']:.1f}x")
    print(f"cosine(engine, naive) over {len(cosines)} prompt-layers: min {figures['cosine_min']:.6f}, "
          f"median {figures['cosine_median']:.6f}")
    print(f"peak RSS above the loaded model: engine {figures['peak_rss_delta_mib']['engine']:.0f} MiB, "
          f"naive {figures['peak_rss_delta_mib']['naive']:.0f} MiB")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
