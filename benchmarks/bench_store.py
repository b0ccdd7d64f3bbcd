"""Atlas store throughput: writing and reading N rows of L layers x H float32 (like ``direction``)
through the store's row API, its batched ``write_rows`` and its Dask read path, against
``numpy.save``/``numpy.load`` of the same array in the same run; and stored size against raw size.

    python benchmarks/bench_store.py [--rows 10000] [--layers 3] [--hidden 576] [--repeats 3]

Each figure is the median over the repeats; every write repeat starts from a fresh store.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from refusal_atlas.storage import AtlasStore, StoreSpec  # noqa: E402


def _spec(layers: int, hidden: int) -> StoreSpec:
    return StoreSpec(model_id="bench", model_revision="-", model_fingerprint="bench-fp",
                     hidden_size=hidden, num_layers=max(30, layers), layers=tuple(range(layers)),
                     method={"bench": True})


def _sizes(path: Path) -> tuple[int, int, int]:
    """(files, bytes in them, bytes the filesystem allocates for them) under ``path``."""
    files = [p for p in path.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files), sum(p.stat().st_blocks * 512 for p in files)


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _fresh_store(root: Path, name: str, n: int, spec: StoreSpec, record) -> AtlasStore:
    """A new store with ``n`` registered prompts; the registration is timed too."""
    path = root / name
    shutil.rmtree(path, ignore_errors=True)
    store = AtlasStore.create_or_open(str(path), spec)
    prompts = [{"id": f"p{i:06d}", "text": f"prompt {i}", "label": "harmful"} for i in range(n)]
    record("store.register_prompts, all in one call", _timed(lambda: store.register_prompts(prompts)))
    return store


def _cold_index(store: AtlasStore) -> None:
    """What a fresh process pays on its first ``row_of``: reading every prompt id."""
    from refusal_atlas.storage import prompts

    prompts._indexes.clear()
    AtlasStore.open(store.uri).row_of("p000000")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256, help="rows per write_rows call")
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary folder)")
    args = parser.parse_args()

    print("$ python " + " ".join(shlex.quote(a) for a in sys.argv))
    n, spec = args.rows, _spec(args.layers, args.hidden)
    rng = np.random.default_rng(0)
    data = rng.standard_normal((n, args.layers, args.hidden)).astype(np.float32)
    data /= np.linalg.norm(data, axis=-1, keepdims=True)  # unit directions, as stored
    raw_mb = data.nbytes / 1e6
    print(f"{n} rows x {args.layers} layers x {args.hidden} float32 = {raw_mb:.1f} MB raw; "
          f"{os.cpu_count()} CPUs; median of {args.repeats} repeats\n")

    root = Path(args.dir or tempfile.mkdtemp(prefix="bench-store-"))
    root.mkdir(parents=True, exist_ok=True)
    times: dict[str, list[float]] = {}

    def record(label: str, seconds: float) -> None:
        times.setdefault(label, []).append(seconds)

    for _ in range(args.repeats):
        npy = root / "direction.npy"
        record("numpy.save (one file)", _timed(lambda: np.save(npy, data)))
        record("numpy.load (one file)", _timed(lambda: np.load(npy)))

        store = _fresh_store(root, "rows.zarr", n, spec, record)
        record("store.write_row, one row a call",
               _timed(lambda: [store.write_row(r, {"direction": data[r]}) for r in range(n)]))

        store = _fresh_store(root, "batched.zarr", n, spec, record)
        b = args.batch
        record(f"store.write_rows, {b} rows a call", _timed(
            lambda: [store.write_rows(range(s, min(s + b, n)), {"direction": data[s:s + b]})
                     for s in range(0, n, b)]))

        store = _fresh_store(root, "bulk.zarr", n, spec, record)
        record("store.write_rows, all rows in one call",
               _timed(lambda: store.write_rows(range(n), {"direction": data})))

        reader = AtlasStore.open(str(root / "bulk.zarr"))
        out = {}
        record("store.dask_array(done rows).compute()",
               _timed(lambda: out.setdefault("x", reader.dask_array("direction").compute())))
        assert np.array_equal(out["x"], data), "read back differs from what was written"
        record("  of which store.status() (done flags)", _timed(reader.status))
        record("open + prompt id index (row_of, new process)", _timed(lambda: _cold_index(reader)))
        sample = range(0, n, max(1, n // 1000))
        record(f"store.read_rows, one row a call ({len(sample)} rows)", _timed(
            lambda: [reader.read_rows([r], ["direction"]) for r in sample]))

    # MB/s only where the 'direction' data itself moves; other rows move ids or flags.
    moves_data = ("numpy", "write_row", "dask_array", "read_rows")
    print(f"| {'operation':<46} | {'median s':>9} | {'rows/s':>9} | {'MB/s':>7} |")
    print(f"|{'-' * 48}|{'-' * 11}|{'-' * 11}|{'-' * 9}|")
    for label, values in times.items():
        median = statistics.median(values)
        rows = len(range(0, n, max(1, n // 1000))) if "read_rows" in label else n
        speed = f"{raw_mb * rows / n / median:>7.1f}" if any(k in label for k in moves_data) else f"{'-':>7}"
        print(f"| {label:<46} | {median:>9.3f} | {rows / median:>9.0f} | {speed} |")
    print()
    npy_size = (root / "direction.npy").stat().st_size
    print(f"numpy .npy file: {npy_size / 1e6:.1f} MB for {raw_mb:.1f} MB raw")
    print("stored sizes (bytes in the files / bytes the filesystem allocates, 4 KiB blocks):")
    for label, path in (("direction", "bulk.zarr/direction"), ("status", "bulk.zarr/status"),
                        ("prompt_id", "bulk.zarr/prompt_id"), ("whole store", "bulk.zarr")):
        files, used, allocated = _sizes(root / path)
        print(f"  {label:<12} {files:>6} files  {used / 1e6:>7.1f} MB  ({used / data.nbytes:>6.1%} of raw)"
              f"  allocated {allocated / 1e6:>7.1f} MB")
    if args.dir is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
