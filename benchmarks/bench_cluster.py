"""Benchmark: cluster synthetic unit directions end to end from a Zarr store.

    .venv/bin/python benchmarks/bench_cluster.py --rows 100000
    .venv/bin/python benchmarks/bench_cluster.py --rows 1000000 --spaces residual

A synthetic Zarr v3 array [rows, 576] float32 is written once into a temporary folder (in a
child process, so its memory does not count), chunked CHUNK_ROWS rows by all 576 columns with
zstd: a benchmark of the clustering, not of per-file overhead. (The atlas store keeps one row
per chunk so that concurrent writers never share a chunk; reading it is a separate cost, shown
with --row-chunks 1 for a few rows.) The data: 20 planted directions, cosine about 0.78 to
their centre, a shared component of varying size (mean pairwise cosine 0.40; the default model's
directions measure 0.5 to 0.6), and 10% uniformly random rows.

Then, in this process: read + unit-normalise + persist, the common direction, and for each
space PCA (svd_compressed to 32 dims) + HDBSCAN (fitted on at most --fit-rows rows, the rest
assigned with approximate_predict) + per-cluster directions in the full dimension + exemplars,
exactly as `tasks.cluster.cluster_directions` does. Printed: the wall time of each
phase and in total, and the peak resident memory of this process (ru_maxrss).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


DIM = 576
CHUNK_ROWS = 8192
CLUSTERS = 20


def write_store(path: str, rows: int, chunk_rows: int, seed: int = 0) -> None:
    """Write the synthetic directions block by block (never all in memory)."""
    import zarr
    from zarr.codecs import ZstdCodec

    rng = np.random.default_rng(seed)
    centres, shared = planted_basis(np.random.default_rng(seed), DIM)
    array = zarr.create_array(path, shape=(rows, DIM), chunks=(chunk_rows, DIM), dtype="float32",
                              compressors=ZstdCodec(level=3), dimension_names=("prompt", "hidden"))
    block = max(chunk_rows, 65536 // chunk_rows * chunk_rows)
    for start in range(0, rows, block):
        n = min(block, rows - start)
        array[start: start + n] = structured_rows(rng, n, centres, shared)


def planted_basis(rng: np.random.Generator, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """CLUSTERS orthonormal cluster centres [CLUSTERS, dim] and a shared direction [dim]."""
    basis = np.linalg.qr(rng.standard_normal((dim, CLUSTERS + 1)))[0].T
    return basis[:CLUSTERS], basis[CLUSTERS]


def structured_rows(rng: np.random.Generator, n: int, centres: np.ndarray, shared: np.ndarray) -> np.ndarray:
    """n synthetic directions [n, dim] float32: a planted centre plus noise (10% of rows pure
    noise), unit-normalised, plus a shared component of varying size."""
    dim = centres.shape[1]
    labels = rng.integers(0, len(centres), n)
    x = centres[labels] + 0.8 * rng.standard_normal((n, dim)) / np.sqrt(dim)
    noise = rng.random(n) < 0.1
    x[noise] = rng.standard_normal((int(noise.sum()), dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x += rng.uniform(0.0, 2.0, size=(n, 1)) * shared
    return x.astype(np.float32)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def run(path: str, spaces: list[str], settings, layer_index: int | None = None) -> dict[str, float]:
    """Cluster the directions at `path`: a plain [rows, D] Zarr array, or (layer_index given) an
    atlas store, whose done directions at that stored layer are streamed block by block."""
    import dask.array as da

    from refusal_atlas.tasks.clustering.spaces import cluster_space
    from refusal_atlas.tasks.clustering.geometry import common_direction, unit_rows

    times: dict[str, float] = {}
    t0 = time.perf_counter()
    if layer_index is None:
        directions = da.from_zarr(path)
    else:
        from refusal_atlas.storage import AtlasStore

        directions = AtlasStore.open(path).dask_array("direction")[:, layer_index, :]
    unit, keep = unit_rows(directions)
    times["read + normalise"] = time.perf_counter() - t0
    t = time.perf_counter()
    common, mean_cosine = common_direction(unit)
    times["common direction"] = time.perf_counter() - t
    print(f"  rows {keep.size:,}, mean pairwise cosine {mean_cosine:.3f}")
    for space in spaces:
        t = time.perf_counter()
        result = cluster_space(unit, space, settings, common=common)
        times[f"{space}: PCA + HDBSCAN + centroids"] = time.perf_counter() - t
        print(f"  {space}: {result.n_clusters} clusters, noise share {result.noise_share:.1%}, "
              f"HDBSCAN fitted on {int(result.fitted.sum()):,} rows, the rest assigned")
    times["total"] = time.perf_counter() - t0
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--spaces", nargs="+", default=["raw", "residual"], choices=["raw", "residual"])
    parser.add_argument("--pca-dim", type=int, default=32)
    parser.add_argument("--min-cluster-size", type=int, default=5)
    parser.add_argument("--min-samples", type=int, default=None)
    parser.add_argument("--fit-rows", type=int, default=20_000,
                        help="rows HDBSCAN is fitted on; the rest are assigned with approximate_predict (0: all)")
    parser.add_argument("--row-chunks", type=int, default=CHUNK_ROWS, help="rows per Zarr chunk")
    parser.add_argument("--workdir", default=None, help="where to write the store (default: a temp folder)")
    parser.add_argument("--atlas-store", default=None,
                        help="cluster the done directions of this atlas store instead of a synthetic array "
                        "(e.g. one bench_store.py wrote with --dir); --rows is then ignored")
    parser.add_argument("--layer-index", type=int, default=0, help="with --atlas-store: which stored layer")
    args = parser.parse_args()

    from refusal_atlas.tasks.settings import ClusterSettings

    settings = ClusterSettings(pca_dim=args.pca_dim, min_cluster_size=args.min_cluster_size,
                               min_samples=args.min_samples, bootstraps=0, fit_rows=args.fit_rows or None)
    if args.atlas_store:
        print(f"settings: {settings.model_dump_json()}; cores: {os.cpu_count()}; store {args.atlas_store}")
        times = run(args.atlas_store, args.spaces, settings, args.layer_index)
        for phase, seconds in times.items():
            print(f"  {phase:<40s} {seconds:8.1f} s")
        print(f"peak RSS: {peak_rss_gb():.2f} GiB")
        return
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        path = os.path.join(tmp, "directions.zarr")
        t = time.perf_counter()
        child = multiprocessing.get_context("spawn").Process(target=write_store, args=(path, args.rows, args.row_chunks))
        child.start()
        child.join()
        if child.exitcode != 0:
            raise SystemExit(f"writing the synthetic store failed (exit code {child.exitcode})")
        print(f"wrote {args.rows:,} x {DIM} float32 in chunks of {args.row_chunks} rows "
              f"({time.perf_counter() - t:.1f} s, not counted)")
        print(f"settings: {settings.model_dump_json()}; cores: {os.cpu_count()}")
        times = run(path, args.spaces, settings)
    for phase, seconds in times.items():
        print(f"  {phase:<40s} {seconds:8.1f} s")
    print(f"peak RSS: {peak_rss_gb():.2f} GiB")


if __name__ == "__main__":
    main()
