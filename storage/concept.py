"""Option 2 (concept vectors): the group ``concept/``, written once per run by a single writer.

``concept/direction`` [prompt, layer, hidden] is aligned with the root prompt rows (row i of the
store is row i here), with NaN for rows that got no concept direction; its prompt axis is as long
as the store was when it was written. Many rows share a chunk, since one writer writes it whole.
The group is written complete-last (groups.py); its attributes record the data version it was
made from and how many rows fed each result.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from refusal_atlas.storage.groups import complete_group, write_complete_group
from refusal_atlas.storage.layout import CONCEPT_ARRAYS, CONCEPT_GROUP, CONCEPT_ROWS_PER_CHUNK, create_array

_LAYOUT = {a.name: a for a in CONCEPT_ARRAYS}


def _rows(values, what: str, n_rows: int) -> np.ndarray:
    rows = np.asarray(values, dtype=np.int64).reshape(-1)
    if rows.size and (rows.min() < 0 or rows.max() >= n_rows):
        raise ValueError(f"{what} must lie in 0..{n_rows - 1}")
    if np.unique(rows).size != rows.size:
        raise ValueError(f"{what} repeats a row")
    return rows


def write_concept(
    root,
    sizes: Mapping[str, int],
    *,
    rows,
    direction: np.ndarray,
    anchor: np.ndarray,
    diff_in_means: np.ndarray,
    anchor_rows,
    harmful_rows,
    data_version: str,
    params: Mapping[str, Any] | None = None,
) -> None:
    """Write ``concept/``. ``direction`` is [len(rows), layer, hidden] for the store rows ``rows``.

    ``anchor`` and ``diff_in_means`` are [layer, hidden]; ``anchor_rows``/``harmful_rows`` are
    the rows whose h was averaged into the harmless anchor and the harmful mean.
    """
    n_rows, n_layers, hidden = sizes["prompt"], sizes["layer"], sizes["hidden"]
    rows = _rows(rows, "rows", n_rows)
    anchor_rows = _rows(anchor_rows, "anchor_rows", n_rows)
    harmful_rows = _rows(harmful_rows, "harmful_rows", n_rows)
    direction = np.asarray(direction, dtype=np.float32)
    if direction.shape != (rows.size, n_layers, hidden):
        raise ValueError(f"direction has shape {direction.shape}, expected {(rows.size, n_layers, hidden)}")
    for name, values in (("anchor", anchor), ("diff_in_means", diff_in_means)):
        if np.shape(values) != (n_layers, hidden):
            raise ValueError(f"{name} has shape {np.shape(values)}, expected {(n_layers, hidden)}")
    attrs = {
        "data_version": data_version,
        "params": dict(params or {}),
        "n_prompts": n_rows,
        "n_direction_rows": int(rows.size),
        "n_anchor_rows": int(anchor_rows.size),
        "n_harmful_rows": int(harmful_rows.size),
    }
    order = np.argsort(rows)
    members = {"anchor_member": anchor_rows.size, "harmful_member": harmful_rows.size}

    def write_arrays(group) -> None:
        all_sizes = {**sizes, **members}
        target = create_array(group, _LAYOUT["direction"], all_sizes, rows_per_chunk=CONCEPT_ROWS_PER_CHUNK)
        if rows.size:
            target.set_orthogonal_selection((rows[order],), direction[order])
        create_array(group, _LAYOUT["anchor"], all_sizes)[...] = anchor
        create_array(group, _LAYOUT["diff_in_means"], all_sizes)[...] = diff_in_means
        for name, values in (("anchor_row", anchor_rows), ("harmful_row", harmful_rows)):
            array = create_array(group, _LAYOUT[name], all_sizes)
            if values.size:
                array[...] = values

    write_complete_group(root, CONCEPT_GROUP, attrs, write_arrays)


def concept_group(root):
    """The complete ``concept`` group, or None when there is none (or it is half written)."""
    return complete_group(root, CONCEPT_GROUP)
