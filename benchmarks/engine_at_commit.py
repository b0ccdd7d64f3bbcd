"""Time the direction engine of another commit, in a process of its own, for side-by-side runs.

`bench_engine.py --before REF` compares today's engine with the engine as it was at REF (by
default the last commit before issue 17's engine work), rather than with today's code run in an
older mode: everything that has sped up since counts. `checkout(ref)` unpacks REF's three
packages with `git archive` into a temporary folder laid out as the `refusal_atlas` namespace,
and `run(...)` starts this file as a script with that folder first on PYTHONPATH (ahead of the
editable install), so the child imports REF's code; it checks that it did before timing.

    python benchmarks/engine_at_commit.py --texts T.json --out R.npz [--expect-under DIR]

The child loads the default model, runs the engine once on two prompts to warm up, then times
one `compute_many` over all texts and writes the seconds and the directions [n, L, D].
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def checkout(ref: str) -> Path:
    """A folder holding REF's tasks, flows and storage as refusal_atlas.{tasks,flows,storage}."""
    base = Path(tempfile.mkdtemp(prefix="engine-at-commit-"))
    (base / "src").mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "tasks", "flows", "storage"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(base / "src")], input=archive, check=True)
    package = base / "pkg" / "refusal_atlas"
    package.mkdir(parents=True)
    for name in ("tasks", "flows", "storage"):
        (package / name).symlink_to(base / "src" / name)
    return base / "pkg"


def run(texts: list[str], layers: list[int], steps: int, max_batch: int, code: Path | None) -> tuple[float, np.ndarray]:
    """(seconds of one compute_many over texts, directions [n, L, D]) from a child process running
    the engine of `code` (a checkout() folder) or, with None, of this working tree."""
    with tempfile.TemporaryDirectory() as tmp:
        texts_file, out = Path(tmp) / "texts.json", Path(tmp) / "out.npz"
        texts_file.write_text(json.dumps(texts))
        env = dict(os.environ)
        command = [sys.executable, __file__, "--texts", str(texts_file), "--out", str(out), "--steps", str(steps),
                   "--max-batch", str(max_batch), "--layers", *map(str, layers)]
        if code is not None:
            env["PYTHONPATH"] = os.pathsep.join([str(code), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
            command += ["--expect-under", str(code)]
        done = subprocess.run(command, env=env, cwd=tempfile.gettempdir(), capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"the engine at {code or 'this tree'} failed:\n{done.stderr[-4000:]}")
        data = np.load(out)
        return float(data["seconds"]), data["directions"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--texts", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--layers", type=int, nargs="+", default=[12, 18, 24])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--expect-under", default="", help="Fail unless the engine is imported from under this folder.")
    args = p.parse_args()
    import refusal_atlas.tasks.engine.direction_engine as engine_module
    from refusal_atlas.tasks.engine.direction_engine import DirectionEngine
    from refusal_atlas.tasks.model.loading import get_model
    from refusal_atlas.tasks.settings import DirectionSettings, EngineSettings, ModelSettings

    if args.expect_under and not Path(engine_module.__file__).is_relative_to(args.expect_under):
        sys.exit(f"the engine came from {engine_module.__file__}, not from {args.expect_under}")
    texts = json.loads(args.texts.read_text())
    engine = DirectionEngine(get_model(ModelSettings()), DirectionSettings(layers=args.layers, steps=args.steps),
                             EngineSettings(max_batch=args.max_batch))
    engine.compute_many(texts[:2])  # warm-up: first-call allocations and kernel choices
    start = time.perf_counter()
    results = engine.compute_many(texts)
    seconds = time.perf_counter() - start
    np.savez(args.out, seconds=seconds, directions=np.stack([r.direction for r in results]))


if __name__ == "__main__":
    main()
