"""Clustering runs: one complete-last group ``clusters/<name>`` per (parameters, data version).

The name is a hash of the clustering parameters and the data version of the rows clustered, so
the clustering step can look a run up before computing it (a cache) and two runs with different
inputs never share a group. Standard arrays (``layout.CLUSTER_ARRAYS``) are checked for their
dims and cast to their dtypes; any other named array is stored as given, with its dims.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from refusal_atlas.storage.groups import (
    check_named_arrays,
    complete_group,
    complete_names,
    read_named_arrays,
    write_complete_group,
    write_named_array,
)
from refusal_atlas.storage.layout import CLUSTER_ARRAYS
from refusal_atlas.storage.spec import canonical_json
from refusal_atlas.storage.uri import validate_name

_STANDARD = {a.name: a for a in CLUSTER_ARRAYS}


@dataclass(frozen=True)
class ClusterRun:
    """A complete clustering run as read back: attributes and ``{name: (dims, values)}``."""

    name: str
    params: dict[str, Any]
    data_version: str
    metrics: dict[str, Any]
    attrs: dict[str, Any]
    arrays: dict[str, tuple[tuple[str, ...], np.ndarray]] = field(repr=False)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name][1]

    def to_xarray(self):
        """The run as an ``xarray.Dataset`` (dims as stored, attrs params/data_version/metrics)."""
        import xarray as xr

        return xr.Dataset({k: (dims, v) for k, (dims, v) in self.arrays.items()}, attrs=self.attrs)


def cluster_run_name(params: Mapping[str, Any], data_version: str, prefix: str = "run") -> str:
    """``<prefix>-<16 hex>``: a hash of the clustering parameters and the data version."""
    digest = hashlib.sha256(canonical_json({"params": params, "data_version": data_version}).encode())
    return validate_name(f"{prefix}-{digest.hexdigest()[:16]}", "cluster run name")


def _checked(arrays: Mapping[str, tuple]) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
    checked = check_named_arrays(arrays)
    for name, (dims, values) in checked.items():
        layout = _STANDARD.get(name)
        if layout is None:
            continue
        if dims != layout.dims:
            raise ValueError(f"cluster array {name!r} must have dims {layout.dims}, got {dims}")
        checked[name] = (dims, values.astype(layout.dtype, casting="same_kind"))
    return checked


def write_cluster_run(clusters_group, name: str, arrays: Mapping[str, tuple], attrs: Mapping[str, Any]) -> None:
    """Write the run ``name``; ``attrs`` needs ``params`` and ``data_version``, may hold ``metrics``.

    An earlier group of the same name, complete or half written, is removed first.
    """
    validate_name(name, "cluster run name")
    missing = [key for key in ("params", "data_version") if key not in attrs]
    if missing:
        raise ValueError(f"cluster run attrs need {missing}; give the parameters and data version")
    attrs = {"metrics": {}, **attrs}
    checked = _checked(arrays)

    def write_arrays(group) -> None:
        for array_name, (dims, values) in checked.items():
            write_named_array(group, array_name, dims, values)

    write_complete_group(clusters_group, name, attrs, write_arrays)


def read_cluster_run(clusters_group, name: str) -> ClusterRun:
    """The complete run ``name``; a missing or half-written run raises ``KeyError``."""
    group = complete_group(clusters_group, name) if clusters_group is not None else None
    if group is None:
        raise KeyError(f"no complete cluster run named {name!r} in this store")
    attrs = dict(group.attrs)
    return ClusterRun(
        name=name,
        params=attrs["params"],
        data_version=attrs["data_version"],
        metrics=attrs.get("metrics", {}),
        attrs=attrs,
        arrays=read_named_arrays(group),
    )


def list_cluster_runs(clusters_group) -> list[str]:
    """Names of the complete runs, sorted; half-written runs are left out."""
    return [] if clusters_group is None else complete_names(clusters_group)
