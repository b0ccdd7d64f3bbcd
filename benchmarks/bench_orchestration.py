"""Orchestration overhead: the refusal_atlas flow against calling the engine directly.

Both sides compute Option 1 for the same prompts with the same settings on the same loaded
model (the flow's tasks find it in the process's engine cache, so neither side pays for
loading). The direct side is `DirectionEngine.compute_many`; the flow side is a whole
`refusal_atlas` run (threads runner, a fresh store each time, evaluation off): registration,
one Prefect task per prompt writing its row, concept vectors, clustering and the report. The
Prefect server (ephemeral) is started before timing.

    python benchmarks/bench_orchestration.py --prompts 128 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.mixed_prompts import mixed_sources  # noqa: E402
from refusal_atlas.tasks.engine.direction_engine import get_engine  # noqa: E402
from refusal_atlas.tasks.prompts.records import load_prompts  # noqa: E402
from refusal_atlas.tasks.settings import AtlasSettings  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print("command: python benchmarks/bench_orchestration.py " + " ".join(sys.argv[1:]))

    sources = mixed_sources(args.prompts)
    prompts = load_prompts(sources)
    work = Path(tempfile.mkdtemp(prefix="bench-orchestration-"))
    base = AtlasSettings(prompts=sources, evaluate=False, store=str(work / "atlas.zarr"))
    engine = get_engine(base.model, base.directions, base.engine)
    labels = set(base.directions.gradient_labels)
    harmful = [p.text for p in prompts if p.label in labels]
    others = [p.text for p in prompts if p.label not in labels]

    from prefect.testing.utilities import prefect_test_harness

    from refusal_atlas.flows.atlas import refusal_atlas

    direct, flow, extract = [], [], []
    with prefect_test_harness(server_startup_timeout=120):
        for repeat in range(args.repeats):
            start = time.perf_counter()
            engine.compute_many(harmful, gradient=True)
            engine.compute_many(others, gradient=False)
            direct.append(time.perf_counter() - start)

            settings = base.model_copy(update={"store": str(work / f"atlas-{repeat}.zarr"),
                                               "report_dir": str(work / f"report-{repeat}")})
            start = time.perf_counter()
            result = refusal_atlas(settings)
            flow.append(time.perf_counter() - start)
            assert result["computed"] == len(prompts), result
            extract.append(_subflow_seconds())
    shutil.rmtree(work, ignore_errors=True)
    d, f, e = (statistics.median(x) for x in (direct, flow, extract))
    figures = {"prompts": len(prompts), "direct_s": d, "flow_s": f, "extraction_subflow_s": e,
               "overhead_flow": f / d - 1, "overhead_extraction": e / d - 1, "repeats": args.repeats,
               "direct_all": direct, "flow_all": flow}
    print(f"prompts: {len(prompts)} ({len(harmful)} with gradients); medians of {args.repeats}")
    print(f"engine directly:            {d:8.1f} s")
    print(f"flow, extraction subflow:   {e:8.1f} s  ({100 * (e / d - 1):+.1f}%)")
    print(f"flow, whole run:            {f:8.1f} s  ({100 * (f / d - 1):+.1f}%)")
    print(json.dumps(figures))


def _subflow_seconds() -> float:
    """Wall time of the latest extract-directions subflow run, from the Prefect API."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=20)
        run = next(r for r in runs if r.flow_id and client.read_flow(r.flow_id).name == "extract-directions")
        return (run.end_time - run.start_time).total_seconds()


if __name__ == "__main__":
    main()
