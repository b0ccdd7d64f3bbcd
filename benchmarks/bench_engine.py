"""Engine against a naive loop on SmolLM2-135M-Instruct, side by side in one run.

The naive loop takes one prompt at a time and, at every gradient step, runs the full prompt
plus phrases forward and backward (tests/naive.py). The engine batches prompts, runs each
prefix once and feeds the phrases as one token tree. It runs twice: as it did before issue 17,
every step through all layers ("full stack", `skip_lower_layers=False`), and with steps that
run only layers L+1..N-1 ("upper layers", the default). All compute Option 1 at the same
layers with the same K; the cosine between their directions shows they compute the same thing.

    python benchmarks/bench_engine.py --prompts 32 --naive-prompts 8 --steps 8 --repeats 3

The naive loop runs on a subset (--naive-prompts) because it is slow; rates are per prompt.
Last, one gradient step (point and anchor of one batch at every layer) is timed on both engine
paths against a bound: the multiply-adds it needs in layers L+1..N-1 and the head, forward and
backward, at the matmul rate this machine measures in the same run.
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


#: The last commit before issue 17's engine work (steps through the upper layers only, the
#: shared prefix opening, the cheaper head): the "today's engine" the issue's 2x is measured against.
BEFORE_ISSUE_17 = "521ddf3"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--naive-prompts", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--layers", type=int, nargs="+", default=[12, 18, 24])
    parser.add_argument("--max-batch", type=int, default=EngineSettings().max_batch,
                        help="Prompts a batch holds, for every engine compared (default: the engine's default).")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--before", default=BEFORE_ISSUE_17, help=(
        "Also time the engine as it was at this commit, each in a process of its own beside today's "
        "(benchmarks/engine_at_commit.py); '' to skip."))
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
    full = DirectionEngine(loaded, settings, EngineSettings(max_batch=args.max_batch, skip_lower_layers=False))
    print(f"prompts: {len(texts)} (engine), {len(subset)} (naive); layers {engine.layers}; K={args.steps}; "
          f"phrases {list(settings.phrases)}; max_batch {args.max_batch}")

    for warm in (engine, full):
        warm.compute_many(texts[:2])  # warm-up: first-call allocations and kernel choices
    engine_all, engine_sub, naive_sub, mem_engine, mem_naive, full_all = [], [], [], [], [], []
    before = commits_side_by_side(texts, engine.layers, args) if args.before else None
    for _ in range(args.repeats):
        start = time.perf_counter()
        full_results = full.compute_many(texts)
        full_all.append(time.perf_counter() - start)
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
    same = [
        float(np.dot(a.direction[i], b.direction[i]) / np.linalg.norm(a.direction[i]) / np.linalg.norm(b.direction[i]))
        for a, b in zip(results, full_results) for i in range(len(engine.layers)) if np.isfinite(a.direction[i]).all()
    ]
    rate = {
        "full_stack_all": len(texts) / statistics.median(full_all),
        "engine_all": len(texts) / statistics.median(engine_all),
        "engine_subset": len(subset) / statistics.median(engine_sub),
        "naive_subset": len(subset) / statistics.median(naive_sub),
    }
    figures = {
        "prompts_per_s": rate,
        "speedup_upper_vs_full_stack": rate["engine_all"] / rate["full_stack_all"],
        "cosine_upper_vs_full_stack_min": min(same),
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
    print(f"\nupper layers vs full stack, all {len(texts)} prompts (median of {args.repeats}): "
          f"{figures['speedup_upper_vs_full_stack']:.2f}x; min cosine between them {min(same):.6f}")
    print(f"speedup, same {len(subset)} prompts (median of {args.repeats}): {figures['speedup_same_prompts']:.1f}x")
    print(f"speedup, engine on all {len(texts)} vs naive rate: {figures['speedup_full_set_vs_naive']:.1f}x")
    print(f"cosine(engine, naive) over {len(cosines)} prompt-layers: min {figures['cosine_min']:.6f}, "
          f"median {figures['cosine_median']:.6f}")
    print(f"peak RSS above the loaded model: engine {figures['peak_rss_delta_mib']['engine']:.0f} MiB, "
          f"naive {figures['peak_rss_delta_mib']['naive']:.0f} MiB")
    if before is not None:
        figures["before_commit"] = before
    figures["step"] = step_against_bound(engine, full, texts[: args.max_batch], args.repeats)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


def commits_side_by_side(texts: list[str], layers: list[int], args) -> dict:
    """The engine at args.before and today's, each in a child process, alternating for
    args.repeats rounds: rates (median), their ratio and the cosine between their directions."""
    from benchmarks.engine_at_commit import checkout, run

    code = checkout(args.before)
    old, new = [], []
    for _ in range(args.repeats):
        seconds, old_dirs = run(texts, layers, args.steps, args.max_batch, code)
        old.append(seconds)
        seconds, new_dirs = run(texts, layers, args.steps, args.max_batch, None)
        new.append(seconds)
    unit = lambda d: d / np.linalg.norm(d, axis=-1, keepdims=True)  # noqa: E731
    cos = (unit(old_dirs) * unit(new_dirs)).sum(-1)
    out = {"commit": args.before, "prompts_per_s_before": len(texts) / statistics.median(old),
           "prompts_per_s_now": len(texts) / statistics.median(new), "seconds_before": old, "seconds_now": new,
           "speedup": statistics.median(old) / statistics.median(new), "cosine_min": float(np.nanmin(cos))}
    print(f"engine at {args.before} vs today's, {len(texts)} prompts, each in its own process (median of "
          f"{args.repeats}): {out['prompts_per_s_before']:.3f} vs {out['prompts_per_s_now']:.3f} prompts/s = "
          f"{out['speedup']:.2f}x; min cosine between their directions {out['cosine_min']:.6f}")
    return out


def matmul_rate(rows: int, inner: int, cols: int, seconds: float = 2.0) -> float:
    """Multiply-adds per second of a float32 [rows, inner] @ [inner, cols] matmul, best of runs."""
    a, b = torch.randn(rows, inner), torch.randn(inner, cols)
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return rows * inner * cols / best


def step_against_bound(engine: DirectionEngine, full: DirectionEngine, texts: list[str], repeats: int) -> dict:
    """Time one gradient step (every query of a batch, point and anchor) on both paths, and
    the multiply-adds it needs in layers L+1..N-1 and the head (forward and backward)."""
    from refusal_atlas.tasks.engine.prefix import PrefixBatch

    model = engine.loaded.model
    rendered = [engine.render(t) for t in texts]
    n_layers = len(engine.layers)
    prompts = torch.arange(len(texts)).repeat_interleave(n_layers).repeat(2)  # point and anchor rows
    layers = torch.tensor(engine.layers).repeat(len(texts)).repeat(2)
    timings, evals = {}, {}
    for name, skip in (("full_stack", False), ("upper_layers", True)):
        batch = PrefixBatch(model, rendered, engine.target, engine.pad_id, skip_lower_layers=skip)
        h0 = batch.evaluate(prompts, layers, None, grad=False).h  # also fills the states below L
        runs = []
        for _ in range(max(repeats, 3)):
            start = time.perf_counter()
            evals[name] = batch.evaluate(prompts, layers, h0, grad=True)
            runs.append(time.perf_counter() - start)
        timings[name] = statistics.median(runs)
    # Multiply-adds per token: a decoder layer's weight matrices, plus attention over the
    # prefix and the tree (scores and weighted values: 2 * heads * head_dim per key).
    cfg = model.config
    per_layer = sum(p.numel() for p in model.model.layers[0].parameters() if p.dim() == 2)
    head = model.lm_head.weight.numel()
    nodes = batch._tree.tokens.shape[1]
    keys = float(batch.prefix_lens.float().mean()) + nodes
    attention = 2 * cfg.num_attention_heads * (cfg.hidden_size // cfg.num_attention_heads) * keys
    above = sum(cfg.num_hidden_layers - 1 - int(layer) for layer in layers)
    forward = nodes * (above * (per_layer + attention) + len(layers) * head)
    # The backward pass needs gradients with respect to activations only (frozen weights).
    macs = 2 * forward
    tokens = len(layers) * nodes
    rate = matmul_rate(tokens, cfg.hidden_size, cfg.intermediate_size)
    bound = macs / rate
    out = {
        "rows": len(layers), "tree_nodes": nodes, "mean_prefix": keys - nodes,
        "step_s": timings, "bound_s": bound, "matmul_macs_per_s": rate, "step_macs": macs,
        "max_abs_f_difference": float((evals["full_stack"].f - evals["upper_layers"].f).abs().max()),
    }
    print(f"\none step: {len(layers)} rows (a batch of {len(texts)} prompts x {n_layers} layers x point and anchor), "
          f"{nodes} tree nodes, mean prefix {keys - nodes:.0f} tokens")
    print(f"matmul rate ([{tokens} x {cfg.hidden_size}] @ [{cfg.hidden_size} x {cfg.intermediate_size}], float32): "
          f"{rate / 1e9:.1f} G multiply-adds/s")
    print(f"multiply-adds the step needs (layers L+1..N-1 and head, forward and backward): {macs / 1e9:.2f} G "
          f"-> bound {bound:.3f} s")
    for name, seconds in timings.items():
        print(f"{name:14} step {seconds:.3f} s = {seconds / bound:.1f}x the bound")
    print(f"|f(full stack) - f(upper layers)| at h_0: max {out['max_abs_f_difference']:.2e}")
    return out


if __name__ == "__main__":
    main()
