"""Atlas store throughput: the block layout against the first layout (one chunk per row), side by
side in one run, writing and reading N rows of L layers x H float32 (like ``direction``).

    python benchmarks/bench_store.py [--rows 10000] [--layers 3] [--hidden 576] [--repeats 3]
    python benchmarks/bench_store.py --rows 1000000 --only-new --repeats 1   # scale

The first layout is no longer in the store's code; ``old_layout_*`` below rebuild it with zarr
directly, as that code did (every per-prompt array chunked one row per chunk, a prompt table of
six string arrays, status pending -> data and error -> status done, issued as one zarr call per
array over all rows; Dask reads 256 rows per task). Each figure is the median over the repeats;
every write repeat starts from a fresh store. Beyond ``--in-memory`` rows, data is generated and
written a batch at a time and the read is streamed (a Dask sum over the rows, not a gather).
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from refusal_atlas.storage import AtlasStore, StoreSpec
from refusal_atlas.storage.layout import PER_PROMPT, PROMPT_TABLE, default_block_rows, sizes_for


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


def _directions(start: int, stop: int, layers: int, hidden: int, structured: bool = False) -> np.ndarray:
    """Directions [stop - start, layers, hidden] float32, the same for the same rows: unit
    Gaussian noise, or (structured) bench_cluster's planted clusters with a shared component,
    so that a clustering run on the store has structure to find, as real directions do."""
    rng = np.random.default_rng(start)
    if structured:
        from benchmarks.bench_cluster import planted_basis, structured_rows

        centres, shared = planted_basis(np.random.default_rng(0), hidden)
        return np.stack([structured_rows(rng, stop - start, centres, shared) for _ in range(layers)], axis=1)
    data = rng.standard_normal((stop - start, layers, hidden)).astype(np.float32)
    return data / np.linalg.norm(data, axis=-1, keepdims=True)


def _records(n: int) -> list[dict]:
    return [{"id": f"p{i:07d}", "text": f"prompt {i}", "label": "harmful"} for i in range(n)]


# ----- the first layout, rebuilt with zarr directly ---------------------------------------------

def old_layout_write(path: Path, data: np.ndarray, spec: StoreSpec, record) -> None:
    """Create a one-row-per-chunk store, register ``len(data)`` prompts and write ``direction``."""
    import zarr
    from zarr.codecs import ZstdCodec

    n = len(data)
    root = zarr.open_group(path, mode="w")
    sizes = sizes_for(0, len(spec.layers), spec.hidden_size)
    arrays = {a.name: root.create_array(
        a.name, shape=a.shape(sizes), chunks=a.chunks(sizes, 1), dtype=str if a.is_string else a.dtype,
        fill_value=a.fill_value, dimension_names=a.dims, compressors=ZstdCodec(level=3)) for a in PER_PROMPT}

    def register() -> None:
        for array in arrays.values():
            array.resize((n, *array.shape[1:]))
        records = _records(n)
        for a in PROMPT_TABLE:
            key = "id" if a.name == "prompt_id" else a.name
            arrays[a.name][:] = np.asarray([r.get(key, "") for r in records], dtype=object)

    def write() -> None:
        arrays["status"][:] = np.zeros(n, np.int8)
        arrays["direction"][:] = data
        arrays["error"][:] = np.full(n, "", dtype=object)
        arrays["status"][:] = np.ones(n, np.int8)

    record("old: register prompts, all in one call", _timed(register))
    record("old: write rows, all in one call", _timed(write))


def old_layout_read(path: Path, out: dict) -> None:
    """The first layout's Dask read of the done directions (256 rows per Dask task)."""
    import dask.array as da
    import zarr

    root = zarr.open_group(path, mode="r")
    done = np.flatnonzero(root["status"][:] == 1)
    lazy = da.from_array(root["direction"], chunks=(256, *root["direction"].shape[1:]), name=False)
    out["old"] = (lazy if done.size == lazy.shape[0] else lazy[done]).compute()


# ----- the block layout --------------------------------------------------------------------------

def new_write(root: Path, name: str, n: int, args, spec: StoreSpec, record, data=None) -> AtlasStore:
    """A fresh block store with ``n`` prompts and their directions; registration and the write
    are timed (``data`` None: generated and written one batch of blocks at a time)."""
    path = root / name
    shutil.rmtree(path, ignore_errors=True)
    store = AtlasStore.create_or_open(str(path), spec, block_rows=args.block)
    record("new: register prompts, all in one call", _timed(lambda: store.register_prompts(_records(n))))
    if data is not None:
        record("new: write_rows, all rows in one call",
               _timed(lambda: store.write_rows(range(n), {"direction": data})))
        return store
    step, total = args.block * 64, 0.0
    for start in range(0, n, step):
        stop = min(start + step, n)
        batch = _directions(start, stop, args.layers, args.hidden, args.structured)
        total += _timed(lambda: store.write_rows(range(start, stop), {"direction": batch}))
    record(f"new: write_rows, {step} rows a call", total)
    return store


def new_stage_and_gather(root: Path, data: np.ndarray, args, spec: StoreSpec, record) -> None:
    """The pipeline's path: every row staged on its own (as per-prompt tasks do), then gathered."""
    path = root / "staged.zarr"
    shutil.rmtree(path, ignore_errors=True)
    store = AtlasStore.create_or_open(str(path), spec, block_rows=args.block)
    store.register_prompts(_records(len(data)))
    n = len(data)
    record(f"new: stage_row, one row a call ({n:,} rows)", _timed(
        lambda: [store.stage_row(r, {"direction": data[r]}) for r in range(n)]), n)
    record(f"new: write_pending, gather the {n:,} staged rows", _timed(store.write_pending), n)
    assert store.done_rows().size == len(data)


def _warm_up() -> None:
    import dask.array as da
    import zarr

    array = zarr.create_array(zarr.storage.MemoryStore(), shape=(64, 8), chunks=(16, 8), dtype="float32")
    array[:] = 1.0
    da.from_array(array, chunks=(16, 8)).sum().compute()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--block", type=int, default=None,
                        help="rows per block of the new layout (default: the store's default for the row size)")
    parser.add_argument("--only-new", action="store_true", help="skip the first layout (for large N)")
    parser.add_argument("--in-memory", type=int, default=100_000,
                        help="up to this many rows, hold all data in memory and read it back whole")
    parser.add_argument("--stage-rows", type=int, default=2000,
                        help="rows sent through the per-row staging path (0: skip it)")
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary folder)")
    parser.add_argument("--structured", action="store_true", help=(
        "write directions with planted cluster structure (benchmarks/bench_cluster.py's), so that "
        "bench_cluster.py --atlas-store on the result clusters something; default: Gaussian noise"))
    args = parser.parse_args()

    print("$ python " + " ".join(shlex.quote(a) for a in sys.argv))
    n, spec = args.rows, _spec(args.layers, args.hidden)
    whole = n <= args.in_memory
    data = _directions(0, n, args.layers, args.hidden, args.structured) if whole else None
    raw_mb = n * args.layers * args.hidden * 4 / 1e6
    args.block = args.block or default_block_rows(args.layers, args.hidden)
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"
    print(f"{n} rows x {args.layers} layers x {args.hidden} float32 = {raw_mb:.1f} MB raw; blocks of "
          f"{args.block} rows; load average at start {load}; median of {args.repeats} repeats\n")
    # Imports and thread pools start before any timing: the first Dask read in a process paid
    # about 1.2 s of importing dask.array and starting zarr's codec threads, which is no part of
    # either layout's read rate (it went to whichever layout was read first).
    _warm_up()
    root = Path(args.dir or tempfile.mkdtemp(prefix="bench-store-"))
    root.mkdir(parents=True, exist_ok=True)
    times: dict[str, list[float]] = {}
    counts: dict[str, int] = {}

    def record(label: str, seconds: float, rows: int = n) -> None:
        times.setdefault(label, []).append(seconds)
        counts[label] = rows

    for _ in range(args.repeats):
        if whole:
            npy = root / "direction.npy"
            record("numpy.save (one file)", _timed(lambda: np.save(npy, data)))
            record("numpy.load (one file)", _timed(lambda: np.load(npy)))
        if not args.only_new:
            shutil.rmtree(root / "old.zarr", ignore_errors=True)
            old_layout_write(root / "old.zarr", data, spec, record)
            out: dict = {}
            record("old: Dask read of the done directions", _timed(lambda: old_layout_read(root / "old.zarr", out)))
            assert np.array_equal(out["old"], data)
        store = new_write(root, "new.zarr", n, args, spec, record, data)
        reader = AtlasStore.open(store.uri)
        if whole:
            got: dict = {}
            record("new: Dask read of the done directions", _timed(
                lambda: got.setdefault("x", reader.dask_array("direction").compute())))
            assert np.array_equal(got["x"], data), "read back differs from what was written"
            if args.stage_rows:
                new_stage_and_gather(root, data[: args.stage_rows], args, spec, record)
        else:
            record("new: Dask read of the done directions (streamed sum)", _timed(
                lambda: reader.dask_array("direction").sum(axis=0).compute()))
        record("new: of which store.status() (done flags)", _timed(reader.status))

    moves_data = ("numpy", "write", "read", "stage", "gather")
    print(f"| {'operation':<54} | {'median s':>9} | {'rows/s':>10} | {'MB/s':>7} |")
    print(f"|{'-' * 56}|{'-' * 11}|{'-' * 12}|{'-' * 9}|")
    rates = {}
    for label, values in times.items():
        median, rows = statistics.median(values), counts[label]
        rates[label] = rows / median
        mb = raw_mb * rows / n
        speed = f"{mb / median:>7.1f}" if any(k in label for k in moves_data) else f"{'-':>7}"
        print(f"| {label:<54} | {median:>9.3f} | {rows / median:>10,.0f} | {speed} |")
    print()
    if not args.only_new:
        write = rates["new: write_rows, all rows in one call"] / rates["old: write rows, all in one call"]
        read = rates["new: Dask read of the done directions"] / rates["old: Dask read of the done directions"]
        print(f"new / old: writes {write:.1f}x, Dask read {read:.1f}x\n")
    print("stored (bytes in the files / bytes the filesystem allocates):")
    stores = [("new", "new.zarr")] + ([] if args.only_new else [("old", "old.zarr")])
    for side, name in stores:
        for label, sub in (("direction", "direction"), ("whole store", "")):
            files, used, allocated = _sizes(root / name / sub)
            print(f"  {side} {label:<12} {files:>9,} files  {used / 1e6:>9.1f} MB ({used / raw_mb / 1e6:>6.1%} of "
                  f"raw direction data)  allocated {allocated / 1e6:>9.1f} MB")
    if args.dir is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
