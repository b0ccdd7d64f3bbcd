"""Every array of the atlas store, declared in one place: name, dimensions, dtype, chunks, fill.

The store is one Zarr v3 group::

    /                       root attributes under ``refusal_atlas`` (provenance, see spec.py)
    layer      [layer]                  int32    model layer index of each position on ``layer``
    prompt_id, text, text_sha256, label, category, source
               [prompt]                 string   the prompt table
    status     [prompt]                 int8     0 pending, 1 done, 2 failed
    error      [prompt]                 string   why a row failed (meaningful where status == 2)
    h0, point, anchor, direction
               [prompt, layer, hidden]  float32  Option 1 states and the unit direction
    f0, f_point, f_anchor, effect
               [prompt, layer]          float32  f at h0/point/anchor and the direction's effect
    steps_taken [prompt, layer]         int16    gradient steps actually taken (-1 unknown)
    best_layer [prompt]                 int16    most effective model layer (-1 unknown)
    concept/   Option 2 (concept.py)    clusters/<name>/  clustering runs (clusters.py)

Every per-prompt array is chunked in *blocks* of ``block_rows`` prompt rows (recorded in the
provenance; 512 for the default model, see ``default_block_rows``) and never sharded. A block's chunks have one writer at a time (the
block writer, blocks.py), so concurrent writers of different blocks touch disjoint chunk objects
and need no lock. Registration starts new prompts at the next block boundary, so appending
prompts only adds chunks and never rewrites one. Unwritten float data reads as NaN.

Schema history: version 1 chunked one row per chunk (6 files per prompt); version 2 has blocks.
A version-1 store is refused with the command that copies it into this layout (migrate.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# Bump when the layout changes incompatibly; opening a store with another version is an error.
SCHEMA_VERSION = 2
# Rows per block when the creator does not choose: the power of two in 64..1024 whose largest
# chunk ([rows, layer, hidden] float32) is nearest BLOCK_BYTES. Measured (BENCHMARKS.md), write
# and read rates grow with the block (each chunk costs a fixed overhead), while a bigger block
# means more compute lost to a repair of one damaged chunk and a later first write; 4 MiB gives
# 512 rows for the default model (3 layers x 576), 64 for a 4096-wide model at 3 layers.
BLOCK_BYTES = 4 * 2**20
MIN_DEFAULT_BLOCK_ROWS, MAX_DEFAULT_BLOCK_ROWS = 64, 1024
MAX_BLOCK_ROWS = 65_536
# The root attribute key that holds the provenance dictionary.
ATTRS_KEY = "refusal_atlas"

PROMPT, LAYER, HIDDEN = "prompt", "layer", "hidden"

STATUS_PENDING, STATUS_DONE, STATUS_FAILED = 0, 1, 2
LABELS = ("harmful", "harmless", "")

# Zstandard at level 3: float32 activations barely compress, so a fast level costs little.
ZSTD_LEVEL = 3

CONCEPT_GROUP = "concept"
CLUSTERS_GROUP = "clusters"
# Rows computed but not yet written into their block, one small .row file each (pending.py).
PENDING_GROUP = "pending"
PENDING_DOC = ("rows computed but not yet written into their block: r<row>.row each, gathered by the "
               "block writer (refusal_atlas.storage.pending)")
# Option 2 directions are written by one writer at once, so many rows share a chunk.
CONCEPT_ROWS_PER_CHUNK = 256

NAN = float("nan")


@dataclass(frozen=True)
class ArrayLayout:
    """One array's declaration. ``dims`` name its axes; the sizes come from the store's spec."""

    name: str
    dims: tuple[str, ...]
    dtype: str  # a numpy dtype name, or "str" for variable-length UTF-8 strings
    fill_value: float | int | str
    doc: str

    @property
    def is_string(self) -> bool:
        return self.dtype == "str"

    def shape(self, sizes: Mapping[str, int]) -> tuple[int, ...]:
        return tuple(sizes[d] for d in self.dims)

    def row_shape(self, sizes: Mapping[str, int]) -> tuple[int, ...]:
        """Shape of one prompt row: every axis but the leading ``prompt`` axis."""
        return tuple(sizes[d] for d in self.dims[1:])

    def chunks(self, sizes: Mapping[str, int], rows_per_chunk: int = 1) -> tuple[int, ...]:
        """One chunk spans whole rows; the prompt axis (if any) holds ``rows_per_chunk`` rows."""
        full = [max(1, sizes[d]) for d in self.dims]
        if self.dims and self.dims[0] == PROMPT:
            full[0] = rows_per_chunk
        return tuple(full)


def _floats(name: str, dims: tuple[str, ...], doc: str) -> ArrayLayout:
    return ArrayLayout(name, dims, "float32", NAN, doc)


PROMPT_TABLE: tuple[ArrayLayout, ...] = (
    ArrayLayout("prompt_id", (PROMPT,), "str", "", "content-hash id of the prompt"),
    ArrayLayout("text", (PROMPT,), "str", "", "the user instruction"),
    ArrayLayout("text_sha256", (PROMPT,), "str", "", "sha256 hex digest of the UTF-8 text"),
    ArrayLayout("label", (PROMPT,), "str", "", "'harmful', 'harmless' or '' (unlabelled)"),
    ArrayLayout("category", (PROMPT,), "str", "", "dataset category, '' for none"),
    ArrayLayout("source", (PROMPT,), "str", "", "where the prompt came from"),
)

ROW_STATE: tuple[ArrayLayout, ...] = (
    ArrayLayout("status", (PROMPT,), "int8", STATUS_PENDING, "0 pending, 1 done, 2 failed"),
    ArrayLayout("error", (PROMPT,), "str", "", "reason the row failed; '' otherwise"),
)

ROW_DATA: tuple[ArrayLayout, ...] = (
    _floats("h0", (PROMPT, LAYER, HIDDEN), "hidden state h_0 at the position"),
    _floats("point", (PROMPT, LAYER, HIDDEN), "point_K, K steps up the gradient of f"),
    _floats("anchor", (PROMPT, LAYER, HIDDEN), "anchor_K, K steps down the gradient of f"),
    _floats("direction", (PROMPT, LAYER, HIDDEN), "unit direction normalise(point_K - anchor_K)"),
    _floats("f0", (PROMPT, LAYER), "f(h_0)"),
    _floats("f_point", (PROMPT, LAYER), "f(point_K)"),
    _floats("f_anchor", (PROMPT, LAYER), "f(anchor_K)"),
    _floats("effect", (PROMPT, LAYER), "f(h_0 + alpha ||h_0|| d) - f(h_0)"),
    ArrayLayout("steps_taken", (PROMPT, LAYER), "int16", -1, "gradient steps taken, -1 unknown"),
    ArrayLayout("best_layer", (PROMPT,), "int16", -1, "most effective model layer, -1 unknown"),
)

# Every array along the prompt axis, which registration grows together.
PER_PROMPT: tuple[ArrayLayout, ...] = PROMPT_TABLE + ROW_STATE + ROW_DATA

LAYER_COORD = ArrayLayout("layer", (LAYER,), "int32", -1, "model layer index of each position")

CONCEPT_ARRAYS: tuple[ArrayLayout, ...] = (
    _floats("direction", (PROMPT, LAYER, HIDDEN), "normalise(h - anchor) per prompt row"),
    _floats("anchor", (LAYER, HIDDEN), "anchor: mean h of the harmless rows"),
    _floats("diff_in_means", (LAYER, HIDDEN), "normalise(mean harmful - mean harmless)"),
    ArrayLayout("anchor_row", ("anchor_member",), "int64", -1, "rows averaged into the anchor"),
    ArrayLayout("harmful_row", ("harmful_member",), "int64", -1, "rows averaged as harmful"),
)

CLUSTER_ARRAYS: tuple[ArrayLayout, ...] = (
    ArrayLayout("prompt_row", ("member",), "int64", -1, "store row of each clustered prompt"),
    ArrayLayout("labels", ("member",), "int32", -1, "cluster label, -1 noise"),
    ArrayLayout("probabilities", ("member",), "float32", NAN, "membership strength"),
    ArrayLayout("outlier_scores", ("member",), "float32", NAN, "GLOSH outlier score"),
    _floats("centroids", ("cluster", HIDDEN), "unit mean direction of each cluster"),
)

BY_NAME: dict[str, ArrayLayout] = {a.name: a for a in PER_PROMPT}
ROW_DATA_NAMES: tuple[str, ...] = tuple(a.name for a in ROW_DATA)


def sizes_for(n_prompts: int, n_layers: int, hidden_size: int) -> dict[str, int]:
    """The dimension sizes of the root arrays."""
    return {PROMPT: n_prompts, LAYER: n_layers, HIDDEN: hidden_size}



def zarr_dtype(layout: ArrayLayout):
    """The dtype argument zarr takes: ``str`` gives Zarr v3 variable-length UTF-8 strings."""
    return str if layout.is_string else layout.dtype


def create_array(
    group,
    layout: ArrayLayout,
    sizes: Mapping[str, int],
    *,
    rows_per_chunk: int = 1,
    coordinates: str = "",
    overwrite: bool = False,
):
    """Create ``layout`` in the zarr ``group`` with zstd, its fill value and dimension names.

    ``coordinates`` (e.g. "prompt_id") is written as the CF ``coordinates`` attribute, so
    ``xarray.open_zarr`` on the store attaches those arrays as coordinates without extra code.
    """
    from zarr.codecs import ZstdCodec

    attributes = {"description": layout.doc}
    if coordinates:
        attributes["coordinates"] = coordinates
    return group.create_array(
        layout.name,
        shape=layout.shape(sizes),
        chunks=layout.chunks(sizes, rows_per_chunk),
        dtype=zarr_dtype(layout),
        fill_value=layout.fill_value,
        dimension_names=layout.dims,
        compressors=ZstdCodec(level=ZSTD_LEVEL),
        attributes=attributes,
        overwrite=overwrite,
    )


def default_block_rows(n_layers: int, hidden_size: int) -> int:
    """Rows per block for a store of ``n_layers`` x ``hidden_size`` float32 rows (see above)."""
    import math

    rows = BLOCK_BYTES / (4 * max(1, n_layers) * max(1, hidden_size))
    power = 2 ** round(math.log2(max(rows, 1)))
    return int(min(MAX_DEFAULT_BLOCK_ROWS, max(MIN_DEFAULT_BLOCK_ROWS, power)))


def check_block_rows(block_rows: int) -> int:
    """``block_rows`` as an int, after checking it is a usable block size."""
    if isinstance(block_rows, bool) or not isinstance(block_rows, int) or not 1 <= block_rows <= MAX_BLOCK_ROWS:
        raise ValueError(f"block_rows must be an integer in 1..{MAX_BLOCK_ROWS}, not {block_rows!r}")
    return block_rows


def create_root_arrays(root, n_layers: int, hidden_size: int, layers, block_rows: int) -> None:
    """Create every root array with zero prompt rows (``overwrite``: a retried creation)."""
    import numpy as np

    sizes = sizes_for(0, n_layers, hidden_size)
    for layout in PER_PROMPT:
        coords = "" if layout.name in {a.name for a in PROMPT_TABLE} else "prompt_id"
        create_array(root, layout, sizes, rows_per_chunk=block_rows, coordinates=coords, overwrite=True)
    create_array(root, LAYER_COORD, sizes, overwrite=True)[...] = np.asarray(layers, np.int32)
    root.require_group(CLUSTERS_GROUP)
    root.require_group(PENDING_GROUP).attrs["description"] = PENDING_DOC
