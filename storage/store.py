"""``AtlasStore``: open or create an atlas store, register prompts, write rows, read them back.

Concurrency model: rows are stored in blocks (layout.py), and each block has one writer at a
time: threads of a process are serialised per block, processes write disjoint blocks, and
per-prompt tasks anywhere stage their rows for one block writer to gather (writes.py). No lock is
needed for rows. Registering prompts grows the arrays and is single-writer: it takes the store's
run lock (lock.py). Group-level writes (concept vectors, cluster runs) take the run lock too and
are marked complete last (groups.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from refusal_atlas.storage.errors import StoreError, unwritable_message
from refusal_atlas.storage.integrity import VerifyReport, locate, verify_store
from refusal_atlas.storage.blocks import block_locks
from refusal_atlas.storage.layout import (
    PER_PROMPT,
    ROW_DATA_NAMES,
    STATUS_DONE,
    STATUS_FAILED,
    check_block_rows,
    default_block_rows,
    sizes_for,
)
from refusal_atlas.storage.lock import run_lock
from refusal_atlas.storage.metadata import ensure_store, reconsolidate_if_present
from refusal_atlas.storage.prompts import append_prompts, shared_index, unique_records
from refusal_atlas.storage.results import StoreResults
from refusal_atlas.storage.spec import StoreSpec, canonical_json, read_provenance
from refusal_atlas.storage.uri import StoreLocation, parse_location
from refusal_atlas.storage.writes import RowWrites


class AtlasStore(StoreResults, RowWrites):
    """One atlas store. Make it with ``create_or_open`` (pipelines) or ``open`` (readers)."""

    def __init__(self, location: StoreLocation, mode: str) -> None:
        """Private: use ``AtlasStore.create_or_open`` or ``AtlasStore.open``."""
        self.location = location
        self.read_only = mode == "r"
        self._store = location.zarr_store(read_only=self.read_only)
        self.refresh()
        self.provenance = read_provenance(self._root.attrs, location.uri)
        self.spec = StoreSpec.from_attrs(self.provenance)
        self._index = shared_index(location.uri, self.store_uuid)
        self._block_locks = block_locks(location.uri, self.store_uuid)

    # ----- opening -------------------------------------------------------------------------

    @classmethod
    def create_or_open(cls, uri: str | os.PathLike, spec: StoreSpec, *, block_rows: int | None = None,
                       lock_timeout: float = 30.0) -> AtlasStore:
        """Open the store at ``uri`` for writing, creating it from ``spec`` if there is none.

        A new store keeps rows in blocks of ``block_rows`` (default: ``layout.default_block_rows``
        for the spec's row size); an existing one keeps its own.

        An existing store must match ``spec`` (model fingerprint, position, layers, method);
        otherwise ``StoreMismatchError`` says what differs. A newer schema: ``StoreSchemaError``.
        """
        location = parse_location(uri)
        try:
            with run_lock(location, lock_timeout):
                # Under the lock, a store that does not exist yet is this call's to create, and
                # to remove again if creating it fails part way: nothing is left half made.
                fresh = location.local_path is not None and not location.local_path.exists()
                try:
                    if block_rows is None:
                        block_rows = default_block_rows(len(spec.layers), spec.hidden_size)
                    ensure_store(location, spec, check_block_rows(block_rows))
                except BaseException:
                    if fresh:
                        shutil.rmtree(location.local_path, ignore_errors=True)
                    raise
        except OSError as err:
            raise StoreError(unwritable_message(location.uri, err)) from err
        return cls(location, "r+")

    @classmethod
    def open(cls, uri: str | os.PathLike, mode: str = "r") -> AtlasStore:
        """Open an existing store: ``mode="r"`` to read, ``"r+"`` to write rows without a spec."""
        if mode not in ("r", "r+"):
            raise ValueError(f"mode must be 'r' or 'r+', not {mode!r}")
        location = parse_location(uri)
        try:
            return cls(location, mode)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"no refusal-atlas store at {location.uri}; create one with "
                "AtlasStore.create_or_open(uri, spec)"
            ) from None

    def refresh(self) -> None:
        """Re-read the metadata (array shapes), e.g. after another process registered prompts."""
        import zarr

        # Writers never read consolidated metadata: it may predate another process's resize.
        consolidated = None if self.read_only else False
        self._root = zarr.open_group(self._store, mode="r" if self.read_only else "r+",
                                     use_consolidated=consolidated)
        self._arrays = dict(self._root.arrays())

    # ----- provenance ----------------------------------------------------------------------

    @property
    def uri(self) -> str:
        return self.location.uri

    @property
    def store_uuid(self) -> str:
        return self.provenance["store_uuid"]

    @property
    def block_rows(self) -> int:
        """Rows per block: one chunk of every per-prompt array (recorded when the store was made)."""
        return int(self.provenance["block_rows"])

    @property
    def layers(self) -> np.ndarray:
        """Model layer index of each position on the ``layer`` axis, int32 [layer]."""
        return np.asarray(self.spec.layers, dtype=np.int32)

    @property
    def n_rows(self) -> int:
        """Rows every per-prompt array has (after an interrupted registration, the shortest)."""
        return min(self._arrays[a.name].shape[0] for a in PER_PROMPT)

    def _sizes(self) -> dict[str, int]:
        return sizes_for(self.n_rows, len(self.spec.layers), self.spec.hidden_size)

    def __repr__(self) -> str:
        return f"AtlasStore({self.uri!r}, rows={self.n_rows}, model={self.spec.model_id!r})"

    # ----- locking and registration --------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, timeout: float = 0.0) -> Iterator[None]:
        """Hold the store's run lock (re-entrant; other threads of this process wait for it).

        On local paths it excludes other processes (``StoreLockedError`` naming the holder after
        ``timeout`` seconds). On remote URLs it only serialises this process: object stores have
        no locks, so there it is advisory and one process must register at a time.
        """
        with run_lock(self.location, timeout):
            yield

    def register_prompts(self, records: Iterable, *, lock_timeout: float = 30.0) -> dict[str, int]:
        """Append the prompts not yet in the store; return id -> row for every given prompt.

        ``records`` are ``PromptRecord``s, mappings or objects with id, text, label, category
        and source. New rows are added with one resize per array; existing chunks are not
        touched. Takes the run lock (waiting up to ``lock_timeout`` seconds).
        """
        self._writable()
        records = unique_records(records)
        with self.lock(lock_timeout):
            self.refresh()
            self._update_index(recheck_vacant=True)
            new = [r for r in records if r.id not in self._index.rows]
            if new:
                append_prompts(self._arrays, self._index, new, self.block_rows)
                self._reconsolidate()
        return {r.id: self._index.rows[r.id] for r in records}

    def _update_index(self, recheck_vacant: bool = False) -> None:
        ids = self._arrays["prompt_id"]
        with self._reading(("prompt_id",)):
            self._index.update(ids, ids.shape[0], recheck_vacant)

    def row_of(self, prompt_id: str) -> int:
        """The row of a registered prompt id (``KeyError`` if it is not registered)."""
        self._update_index()
        row = self._index.rows.get(prompt_id)
        if row is None:
            # Another process may have registered it since this one read the metadata.
            self.refresh()
            self._update_index(recheck_vacant=True)
            row = self._index.rows.get(prompt_id)
        if row is None:
            raise KeyError(f"prompt id {prompt_id!r} is not registered in {self.uri}; "
                           "call register_prompts first")
        return row

    def rows_of(self, prompt_ids: Iterable[str]) -> np.ndarray:
        """Rows of several registered prompt ids, int64 [len(ids)]."""
        return np.asarray([self.row_of(i) for i in prompt_ids], dtype=np.int64)

    def prompt_ids(self, rows: Iterable[int] | None = None) -> np.ndarray:
        """Prompt id of each row (all rows by default), object [n]; '' for a vacant row."""
        self._update_index()
        if rows is not None:
            # A few rows (a task's own) must not cost a pass over every prompt of the store.
            ids = self._index.ids
            return np.asarray([ids.get(int(r), "") for r in rows] + [""], dtype=object)[:-1]
        by_row = np.full(self.n_rows, "", dtype=object)
        for prompt_id, row in self._index.rows.items():
            if row < by_row.size:
                by_row[row] = prompt_id
        return by_row

    # ----- row writes and status -----------------------------------------------------------

    def _checked_rows(self, rows: Iterable[int], unique: bool = True) -> np.ndarray:
        """``rows`` as int64 [n], each a registered row (re-reading the shapes once if not)."""
        rows = np.asarray(rows if isinstance(rows, np.ndarray) else list(rows), dtype=np.int64)
        rows = rows.reshape(-1)
        if unique and np.unique(rows).size != rows.size:
            raise ValueError("a row is given twice in one write")
        if rows.size and rows.max() >= self.n_rows:
            self.refresh()  # another process may have registered more prompts
        if rows.size and (rows.min() < 0 or rows.max() >= self.n_rows):
            raise IndexError(f"rows must lie in 0..{self.n_rows - 1} (the registered rows); "
                             "register the prompts first")
        return rows

    def _writable(self) -> None:
        if self.read_only:
            raise StoreError(f"{self.uri} is open read-only; open it with mode='r+' to write")

    def read_rows(self, rows: Iterable[int], names: Iterable[str] = ROW_DATA_NAMES) -> dict[str, np.ndarray]:
        """``{name: values [len(rows), *row shape]}`` of the given rows, done or not (NaN if unwritten)."""
        rows = self._checked_rows(rows, unique=False)
        names = tuple(names)
        with self._reading(names, rows):
            return {name: self._arrays[name].get_orthogonal_selection((rows,)) for name in names}

    def status(self) -> np.ndarray:
        """Status of every row, int8 [n_rows]: 0 pending, 1 done, 2 failed."""
        with self._reading(("status",)):
            return self._arrays["status"][: self.n_rows]

    @contextlib.contextmanager
    def _reading(self, names: Iterable[str], rows: Iterable[int] | None = None) -> Iterator[None]:
        """Turn a chunk that does not decode into ``StoreCorruptError`` naming its array and block."""
        try:
            yield
        except StoreError:
            raise
        except Exception as err:
            found = locate(self.uri, self._arrays, names, range(self.n_rows) if rows is None else rows,
                           self.block_rows)
            if found is None:
                raise
            raise found from err

    def verify(self, repair: bool = False) -> VerifyReport:
        """Report the chunks that do not decode; ``repair`` marks their rows for recomputation
        and removes damaged groups (see ``storage.integrity``)."""
        if repair:
            self._writable()
        return verify_store(self, repair)

    def done_rows(self) -> np.ndarray:
        """Rows whose status is done, ascending int64."""
        return np.flatnonzero(self.status() == STATUS_DONE).astype(np.int64)

    def pending_rows(self, prompt_ids: Iterable[str], retry_failed: bool = True) -> np.ndarray:
        """Rows of ``prompt_ids`` still to compute (not done; failed ones unless told not to)."""
        rows = np.unique(self.rows_of(prompt_ids))
        if rows.size == 0:
            return rows
        with self._reading(("status",), rows):
            status = self._arrays["status"].get_orthogonal_selection((rows,))
        todo = status != STATUS_DONE
        if not retry_failed:
            todo &= status != STATUS_FAILED
        return rows[todo]

    def errors(self) -> dict[int, str]:
        """row -> reason, for the failed rows."""
        failed = np.flatnonzero(self.status() == STATUS_FAILED)
        if failed.size == 0:
            return {}
        with self._reading(("error",), failed):
            reasons = self._arrays["error"].get_orthogonal_selection((failed,))
        return dict(zip(failed.tolist(), reasons.tolist()))

    def data_version(self) -> str:
        """16 hex digits that change whenever the set of done rows (or the method) changes."""
        done_ids = sorted(self.prompt_ids(self.done_rows()).tolist())
        digest = hashlib.sha256(canonical_json({"store_uuid": self.store_uuid,
                                                "method": self.spec.method}).encode())
        for prompt_id in done_ids:
            digest.update(prompt_id.encode() + b"\n")
        return digest.hexdigest()[:16]

    def _reconsolidate(self) -> None:
        reconsolidate_if_present(self._store)

