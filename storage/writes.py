"""The row-writing half of ``AtlasStore``: block writes, staged rows and the gathering of them.

Two ways in, for two kinds of caller:

- ``write_rows`` / ``write_row`` / ``mark_failed`` write straight into the blocks. Threads of one
  process may call them at will (each block has a lock); *processes* must each write their own
  blocks, since a block is read, merged and written back whole (blocks.py).
- ``stage_row`` / ``stage_failure`` persist one computed row in ``pending/`` (pending.py), from any
  thread or process at any time, and ``write_pending`` gathers staged rows into their blocks. The
  pipeline's per-prompt tasks stage; one block writer per run gathers (the flow, once a block's
  rows have all finished, and once more at the start and the end of the run).

``RowWrites`` is a base class of ``AtlasStore`` and uses its arrays, spec and row checks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from refusal_atlas.storage import pending as _pending
from refusal_atlas.storage.blocks import write_blocks_async
from refusal_atlas.storage.layout import STATUS_DONE, STATUS_FAILED
from refusal_atlas.storage.rowio import check_row_data, run_sync


class RowWrites:
    """Row writes of an atlas store (see ``AtlasStore``)."""

    def write_row(self, row: int, arrays: Mapping[str, Any]) -> None:
        """Write one row's data (``{name: values}`` of that row's shape), then mark it done."""
        self.write_rows([row], {k: np.asarray(v)[np.newaxis] for k, v in arrays.items()})

    def write_rows(self, rows: Iterable[int], arrays: Mapping[str, Any]) -> None:
        """Write many rows at once: ``arrays[name]`` is [len(rows), *row shape] in ``rows`` order.

        Names are those of ``layout.ROW_DATA``. Block by block, every row's data is written
        before its done flag; the caller must be the only process writing these rows' blocks.
        """
        self._writable()
        rows = self._checked_rows(rows)
        checked = check_row_data(rows, arrays, self._sizes(), self.spec.layers)
        order = np.argsort(rows)
        values = {name: v[order] for name, v in checked.items()}
        codes = np.full(rows.size, STATUS_DONE, dtype=np.int8)
        self._write_blocks(rows[order], values, codes, np.full(rows.size, "", dtype=object))

    def mark_failed(self, row: int, reason: str) -> None:
        """Mark a row failed (status 2) with the reason; it is never done until rewritten."""
        self._writable()
        reason = _reason(reason)
        rows = self._checked_rows([row])
        self._write_blocks(rows, {}, np.full(1, STATUS_FAILED, np.int8), np.asarray([reason], dtype=object))

    def _write_blocks(self, rows: np.ndarray, values, codes: np.ndarray, errors: np.ndarray) -> None:
        """Hold the blocks' locks and write sorted ``rows`` through the block writer."""
        block_rows = self.block_rows
        with self._block_locks.holding(np.unique(rows // block_rows).tolist()):
            run_sync(write_blocks_async(self._arrays, block_rows, self.n_rows, rows, values, codes, errors))

    # ----- staged rows ---------------------------------------------------------------------

    def stage_row(self, row: int, arrays: Mapping[str, Any]) -> None:
        """Persist one computed row in ``pending/`` until its block is written (any process)."""
        self._writable()
        rows = self._checked_rows([row])
        checked = check_row_data(rows, {k: np.asarray(v)[np.newaxis] for k, v in arrays.items()},
                                 self._sizes(), self.spec.layers)
        raw = _pending.encode(self._prompt_id_of(int(row)), {k: v[0] for k, v in checked.items()})
        run_sync(_pending.put(self._store, int(row), raw))

    def stage_failure(self, row: int, reason: str) -> None:
        """Persist why a row failed in ``pending/``; its block writer marks it failed."""
        self._writable()
        reason = _reason(reason)
        self._checked_rows([row])
        run_sync(_pending.put(self._store, int(row), _pending.encode(self._prompt_id_of(int(row)), error=reason)))

    def staged(self, row: int) -> _pending.StagedRow | None:
        """The staged row ``row`` if it has one that reads, else None."""
        good, _ = run_sync(_pending.load_many(self._store, np.asarray([row])))
        return good[0] if good else None

    def staged_rows(self) -> np.ndarray:
        """Rows that have a staged file, ascending int64."""
        return run_sync(_pending.staged_rows(self._store))

    def write_pending(self, blocks: Iterable[int] | None = None) -> dict[str, int]:
        """Gather staged rows (of ``blocks``, or all) into their blocks; return counts.

        Every block's staged rows go in with one block write; their files are deleted after the
        block's done flags are written. Dropped without writing: files that do not read (a
        foreign or truncated file), rows that are done already (a gatherer killed after the
        done flags but before deleting the files) and rows that now hold another prompt.
        """
        self._writable()
        rows = self.staged_rows()
        if blocks is not None:
            rows = rows[np.isin(rows // self.block_rows, np.asarray(list(blocks), dtype=np.int64))]
        if rows.size == 0:
            return {"written": 0, "failed": 0, "dropped": 0}
        if rows.max() >= self.n_rows:
            self.refresh()
        staged, unreadable = run_sync(_pending.load_many(self._store, rows[rows < self.n_rows]))
        keep, drop = [], unreadable + rows[rows >= self.n_rows].tolist()
        if staged:
            at = np.asarray([s.row for s in staged], dtype=np.int64)
            status = self.read_rows(at, ("status",))["status"]
            ids = self.prompt_ids(at)
            for entry, code, prompt_id in zip(staged, status, ids):
                (keep if code != STATUS_DONE and prompt_id == entry.prompt_id else drop).append(entry)
        drop = [d if isinstance(d, int) else d.row for d in drop]
        done = [s for s in keep if not s.failed]
        failed = [s for s in keep if s.failed]
        if done:
            names = sorted(set.intersection(*(set(s.data) for s in done)))
            at = np.asarray([s.row for s in done], dtype=np.int64)
            values = {n: np.stack([s.data[n] for s in done]) for n in names}
            checked = check_row_data(at, values, self._sizes(), self.spec.layers)
            self._write_blocks(at, checked, np.full(at.size, STATUS_DONE, np.int8),
                               np.full(at.size, "", dtype=object))
        if failed:
            at = np.asarray([s.row for s in failed], dtype=np.int64)
            self._write_blocks(at, {}, np.full(at.size, STATUS_FAILED, np.int8),
                               np.asarray([s.error for s in failed], dtype=object))
        run_sync(_pending.delete_many(self._store, [s.row for s in keep] + drop))
        return {"written": len(done), "failed": len(failed), "dropped": len(drop)}

    def _prompt_id_of(self, row: int) -> str:
        prompt_id = str(self.prompt_ids([row])[0])
        if not prompt_id:
            raise IndexError(f"row {row} of {self.uri} holds no prompt; register the prompt first")
        return prompt_id


def _reason(reason: str) -> str:
    if not isinstance(reason, str) or not reason:
        raise ValueError("give the reason the row failed as a non-empty string")
    return reason
