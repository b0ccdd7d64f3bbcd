"""Lazy views of the store: Dask arrays and xarray Datasets of the (done) prompt rows.

Dask chunks are ``rows_per_chunk`` rows, a whole number of the store's blocks, so each Dask task
reads whole chunks with one zarr call (a graph over 10,000 prompts has about ten tasks, and no
Python runs per row); the done rows are then picked with one vectorised take per Dask chunk.
String arrays come back as Python objects.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from refusal_atlas.storage.integrity import CheckedArray
from refusal_atlas.storage.layout import LAYER, PROMPT, PROMPT_TABLE, ROW_DATA, ROW_STATE


def dask_rows(array, rows: np.ndarray | None, rows_per_chunk: int = 1024, uri: str = "", arrays=None,
              block_rows: int | None = None):
    """``array`` as a Dask array; if ``rows`` is given, only those rows of the prompt axis.

    A chunk that does not decode raises ``StoreCorruptError`` naming the store ``uri``, the array
    and (given the store's ``arrays`` and ``block_rows``) the block and its rows.
    """
    import dask.array as da

    chunks = array.chunks
    if rows is not None:
        chunks = (max(1, rows_per_chunk), *array.shape[1:])
    # name=False gives the graph a random name: dask cannot hash the wrapper cheaply, and the
    # name needs only to be unique.
    lazy = da.from_array(CheckedArray(array, uri, array.path, arrays, block_rows), chunks=chunks, name=False)
    if rows is not None and not (rows.size == array.shape[0] and np.array_equal(rows, np.arange(rows.size))):
        lazy = lazy[rows]
    if lazy.dtype.kind == "T":
        # numpy's StringDType, which zarr returns for v3 strings, is turned into plain objects so
        # that xarray and pandas treat the values as ordinary Python strings.
        lazy = lazy.map_blocks(lambda block: block.astype(object), dtype=object)
    return lazy


def prompt_dataset(
    arrays: Mapping[str, Any],
    rows: np.ndarray,
    layers: np.ndarray,
    ids_by_row: np.ndarray,
    rows_per_chunk: int,
    attrs: Mapping[str, Any],
    uri: str = "",
    block_rows: int | None = None,
):
    """Dataset [prompt, layer, hidden] of ``rows``: data and status as variables; prompt_id,
    the prompt table and the store row (``prompt``) as coordinates; ``layer`` = model layers."""
    import xarray as xr

    def var(name: str):
        array = arrays[name]
        dims = tuple(array.metadata.dimension_names)
        return xr.Variable(dims, dask_rows(array, rows, rows_per_chunk, uri, arrays, block_rows),
                           attrs={"description": array.attrs.get("description", "")})

    coords = {
        PROMPT: (PROMPT, rows.astype(np.int64)),
        LAYER: (LAYER, np.asarray(layers, dtype=np.int32)),
        "prompt_id": (PROMPT, ids_by_row[rows] if ids_by_row.size else ids_by_row[:0]),
    }
    coords.update({a.name: var(a.name) for a in PROMPT_TABLE if a.name != "prompt_id"})
    data = {a.name: var(a.name) for a in (*ROW_DATA, *ROW_STATE)}
    return xr.Dataset(data, coords=coords, attrs=dict(attrs))


def concept_dataset(group, layers: np.ndarray, ids_by_row: np.ndarray, uri: str = ""):
    """Option 2 vectors as a Dataset; ``direction`` rows line up with the store's rows."""
    import xarray as xr

    n_prompts = int(group.attrs["n_prompts"])
    data = {}
    for name, array in group.arrays():
        dims = tuple(array.metadata.dimension_names)
        data[name] = (dims, dask_rows(array, None, uri=uri))
    coords = {
        LAYER: (LAYER, np.asarray(layers, dtype=np.int32)),
        PROMPT: (PROMPT, np.arange(n_prompts, dtype=np.int64)),
        "prompt_id": (PROMPT, ids_by_row[:n_prompts]),
    }
    return xr.Dataset(data, coords=coords, attrs=dict(group.attrs))
