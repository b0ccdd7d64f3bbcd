"""Groups written whole by one writer (Option 2 vectors, cluster runs), marked complete last.

Such a group is written as: remove any earlier group of the same name (complete or half
written), create it with ``complete: false``, write its arrays, then set ``complete: true``.
Readers treat a group without ``complete: true`` as absent, so a writer that dies part way
leaves nothing a reader would trust, and the next write of the same name starts clean.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from refusal_atlas.storage.layout import ZSTD_LEVEL
from refusal_atlas.storage.spec import json_value
from refusal_atlas.storage.uri import validate_name

COMPLETE = "complete"
_DIM_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def write_complete_group(
    parent, name: str, attrs: Mapping[str, Any], write_arrays: Callable[[Any], None]
):
    """(Re)write ``parent/name``: ``write_arrays(group)`` fills it; ``complete: true`` goes last."""
    validate_name(name, "group name")
    attrs = json_value(dict(attrs), f"the attributes of {name!r}")
    if COMPLETE in attrs:
        raise ValueError(f"the attribute {COMPLETE!r} is set by the store itself; leave it out")
    if name in parent:
        del parent[name]
    group = parent.create_group(name, attributes={**attrs, COMPLETE: False})
    write_arrays(group)
    group.attrs[COMPLETE] = True
    return group


def complete_group(parent, name: str):
    """The group ``parent/name`` if it exists and is complete, else None."""
    validate_name(name, "group name")
    if name not in parent:
        return None
    group = parent[name]
    return group if group.attrs.get(COMPLETE) is True else None


def complete_names(parent) -> list[str]:
    """Sorted names of the complete groups under ``parent``."""
    return sorted(name for name, group in parent.groups() if group.attrs.get(COMPLETE) is True)


def check_named_arrays(arrays: Mapping[str, tuple[tuple[str, ...], Any]]) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
    """Validate ``{name: (dims, values)}``: valid names, one dim name per axis, consistent sizes."""
    checked: dict[str, tuple[tuple[str, ...], np.ndarray]] = {}
    sizes: dict[str, tuple[int, str]] = {}
    for name, entry in arrays.items():
        validate_name(name, "array name")
        try:
            dims, values = entry
        except (TypeError, ValueError):
            raise ValueError(f"array {name!r} must be given as (dims, values)") from None
        dims = (dims,) if isinstance(dims, str) else tuple(dims)
        values = np.asarray(values)
        if values.dtype.kind in "OUT":
            values = values.astype(object)
        if len(dims) != values.ndim:
            raise ValueError(f"array {name!r} has {values.ndim} axes but dims {dims}")
        for dim, size in zip(dims, values.shape):
            if not _DIM_RE.match(dim):
                raise ValueError(f"array {name!r}: dimension name {dim!r} is not an identifier")
            earlier = sizes.setdefault(dim, (size, name))
            if earlier[0] != size:
                raise ValueError(
                    f"dimension {dim!r} has size {size} in {name!r} but {earlier[0]} in {earlier[1]!r}"
                )
        checked[name] = (dims, values)
    return checked


def write_named_array(group, name: str, dims: tuple[str, ...], values: np.ndarray, chunks="auto"):
    """Create ``group/name`` holding ``values`` with dimension names and zstd compression."""
    from zarr.codecs import ZstdCodec

    is_text = values.dtype.kind in "OUT"
    fill = "" if is_text else (np.nan if values.dtype.kind == "f" else 0)
    array = group.create_array(
        name,
        shape=values.shape,
        chunks=chunks,
        dtype=str if is_text else values.dtype,
        fill_value=fill,
        dimension_names=dims,
        compressors=ZstdCodec(level=ZSTD_LEVEL),
    )
    if values.size:
        array[...] = values
    return array


def read_named_arrays(group) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
    """Every array of ``group`` as ``{name: (dims, values)}``; strings come back as objects."""
    out = {}
    for name, array in group.arrays():
        values = array[...]
        if values.dtype.kind in "OUT":
            values = np.asarray(values.tolist(), dtype=object).reshape(values.shape)
        out[name] = (tuple(array.metadata.dimension_names or ()), values)
    return out
