"""The reading and whole-group half of ``AtlasStore``: Option 2 vectors, cluster runs, the
xarray/Dask views and consolidation.

``StoreResults`` is a base class of ``AtlasStore`` and only makes sense there: it uses the
store's zarr group and arrays (``_root``, ``_arrays``, ``_store``), its run lock, and its row
queries (``status``, ``done_rows``, ``prompt_ids``). It lives apart to keep each module short.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from refusal_atlas.storage import clusters as _clusters
from refusal_atlas.storage import concept as _concept
from refusal_atlas.storage import read as _read
from refusal_atlas.storage.layout import ATTRS_KEY, CLUSTERS_GROUP, PROMPT, STATUS_DONE
from refusal_atlas.storage.metadata import consolidate

# Whole-group writes take the run lock too, so that two runs writing the same group name (or a
# registration re-consolidating meanwhile) cannot interleave; they wait this long for it.
GROUP_LOCK_TIMEOUT = 60.0


class StoreResults:
    """Whole-group results and lazy reads of an atlas store (see ``AtlasStore``)."""

    # ----- whole-group results -------------------------------------------------------------

    def write_concept(self, *, rows: Iterable[int], direction: np.ndarray, anchor: np.ndarray,
                      diff_in_means: np.ndarray, anchor_rows: Iterable[int],
                      harmful_rows: Iterable[int], data_version: str,
                      params: Mapping[str, Any] | None = None) -> None:
        """Write Option 2 vectors (replacing earlier ones); see ``storage.concept``.

        ``direction`` [len(rows), layer, hidden] belongs to store ``rows``; ``anchor`` and
        ``diff_in_means`` are [layer, hidden]; ``anchor_rows``/``harmful_rows`` fed the means.
        """
        self._writable()
        with self.lock(GROUP_LOCK_TIMEOUT):
            self.refresh()
            _concept.write_concept(
                self._root, self._sizes(), rows=rows, direction=direction, anchor=anchor,
                diff_in_means=diff_in_means, anchor_rows=anchor_rows, harmful_rows=harmful_rows,
                data_version=data_version, params=params,
            )
            self._reconsolidate()

    def read_concept(self):
        """The complete ``concept`` group as an ``xarray.Dataset`` (``KeyError`` if none)."""
        group = _concept.concept_group(self._root)
        if group is None:
            raise KeyError(f"{self.uri} has no complete concept vectors; run write_concept first")
        ids = self.prompt_ids()
        return _read.concept_dataset(group, self.layers, ids, self.uri)

    def write_cluster_run(self, name: str, arrays: Mapping[str, tuple], attrs: Mapping[str, Any]) -> None:
        """Write the clustering run ``clusters/<name>``; see ``storage.clusters``."""
        self._writable()
        with self.lock(GROUP_LOCK_TIMEOUT):
            _clusters.write_cluster_run(self._root.require_group(CLUSTERS_GROUP), name, arrays, attrs)
            self._reconsolidate()

    def read_cluster_run(self, name: str) -> _clusters.ClusterRun:
        """A complete clustering run (``KeyError`` if it is absent or half written)."""
        return _clusters.read_cluster_run(self._clusters_group(), name)

    def list_cluster_runs(self) -> list[str]:
        """Names of the complete clustering runs."""
        return _clusters.list_cluster_runs(self._clusters_group())

    def _clusters_group(self):
        if not self.read_only:
            return self._root.require_group(CLUSTERS_GROUP)
        return self._root[CLUSTERS_GROUP] if CLUSTERS_GROUP in self._root else None

    # ----- reading -------------------------------------------------------------------------

    def to_xarray(self, done_only: bool = True, rows_per_chunk: int | None = None):
        """The per-prompt arrays as an ``xarray.Dataset`` backed by Dask (see read.py); a Dask
        chunk is ``rows_per_chunk`` rows rounded to whole blocks (default: 4 blocks)."""
        status = self.status()
        rows = np.flatnonzero(status == STATUS_DONE) if done_only else np.arange(status.size)
        return _read.prompt_dataset(self._arrays, rows, self.layers, self.prompt_ids(),
                                    self._dask_rows(rows_per_chunk), {ATTRS_KEY: self.provenance},
                                    self.uri, self.block_rows)

    def dask_array(self, name: str, done_only: bool = True, rows_per_chunk: int | None = None):
        """One array (e.g. "direction" or "concept/direction") as a Dask array.

        Per-prompt arrays are cut to the registered rows, and to the done rows if ``done_only``.
        """
        array = self._root[name]
        rows = None
        if array.metadata.dimension_names[:1] == (PROMPT,) and "/" not in name:
            rows = self.done_rows() if done_only else np.arange(self.n_rows)
        return _read.dask_rows(array, rows, self._dask_rows(rows_per_chunk), self.uri, self._arrays,
                               self.block_rows)

    def _dask_rows(self, rows_per_chunk: int | None) -> int:
        """Rows per Dask chunk: whole blocks, so that no block is read by two Dask tasks."""
        wanted = rows_per_chunk or 4 * self.block_rows
        return max(1, -(-wanted // self.block_rows)) * self.block_rows

    def consolidate(self) -> None:
        """Write consolidated metadata (one read opens the store), e.g. at the end of a run.

        Later registrations and group writes re-consolidate, so the summary never goes stale.
        Under the run lock, so that it cannot interleave with another process's registration
        and record shapes older than that registration's.
        """
        self._writable()
        with self.lock(GROUP_LOCK_TIMEOUT):
            consolidate(self._store)

