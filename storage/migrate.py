"""Copy a schema-1 store (one chunk per row) into a new store in blocks (schema 2).

The old store is only read. The new one gets the old provenance (model, layers, method), a new
store UUID (it is a new store: cache records of the old one must not be reused against it) and
``migrated_from``. Every registered prompt is copied in the old order, skipping vacant rows, with
its row data, status and error, so a run on the new store computes nothing that the old store
had done. Concept vectors and clustering runs are not copied: they are derived from the rows and
keyed by the store, and the next run on the new store writes them again.
"""

from __future__ import annotations

import os

import numpy as np

from refusal_atlas.storage.errors import StoreError
from refusal_atlas.storage.layout import ATTRS_KEY, PROMPT_TABLE, ROW_DATA_NAMES, STATUS_DONE, STATUS_FAILED
from refusal_atlas.storage.prompts import PromptRecord
from refusal_atlas.storage.spec import StoreSpec
from refusal_atlas.storage.uri import parse_location

# Old rows read per step: the old layout reads about a thousand rows a second, so this is a few
# seconds per step and a few hundred MB of memory at most for the default model.
STEP = 4096


def migrate(old_uri: str | os.PathLike, new_uri: str | os.PathLike, block_rows: int | None = None) -> dict:
    """Copy the schema-1 store at ``old_uri`` into a new store at ``new_uri``; return counts."""
    import zarr

    from refusal_atlas.storage.store import AtlasStore

    old_loc, new_loc = parse_location(old_uri), parse_location(new_uri)
    if new_loc.local_path is not None and new_loc.local_path.exists():
        raise StoreError(f"{new_loc.uri} exists; give migrate a new path for the new store")
    old = zarr.open_group(old_loc.zarr_store(read_only=True), mode="r", use_consolidated=False)
    attrs = dict(old.attrs.get(ATTRS_KEY) or {})
    if attrs.get("schema_version") != 1:
        raise StoreError(f"{old_loc.uri} has schema_version {attrs.get('schema_version')!r}; migrate "
                         "copies schema-1 stores (one chunk per row) only")
    spec = StoreSpec.from_attrs(attrs)
    new = AtlasStore.create_or_open(new_loc.uri, spec, block_rows=block_rows)
    new._root.attrs[ATTRS_KEY] = {**new.provenance, "migrated_from": {
        "uri": old_loc.uri, "store_uuid": attrs.get("store_uuid"), "created": attrs.get("created")}}
    n = min(old[a.name].shape[0] for a in PROMPT_TABLE)
    counts = {"prompts": 0, "done": 0, "failed": 0}
    for start in range(0, n, STEP):
        stop = min(start + STEP, n)
        table = {a.name: np.asarray(old[a.name][start:stop], dtype=object) for a in PROMPT_TABLE}
        keep = np.flatnonzero(table["prompt_id"] != "")
        records = [PromptRecord(str(table["prompt_id"][i]), str(table["text"][i]), str(table["label"][i]),
                                str(table["category"][i]), str(table["source"][i])) for i in keep]
        rows = new.register_prompts(records)
        at = np.asarray([rows[r.id] for r in records], dtype=np.int64)
        status = np.asarray(old["status"][start:stop])[keep]
        done, failed = status == STATUS_DONE, status == STATUS_FAILED
        if done.any():
            old_rows = keep[done]
            values = {name: np.asarray(old[name][start:stop])[old_rows] for name in ROW_DATA_NAMES}
            new.write_rows(at[done], values)
        if failed.any():
            errors = np.asarray(old["error"][start:stop], dtype=object)[keep[failed]]
            order = np.argsort(at[failed])
            new._write_blocks(at[failed][order], {}, np.full(order.size, STATUS_FAILED, np.int8), errors[order])
        counts["prompts"] += len(records)
        counts["done"] += int(done.sum())
        counts["failed"] += int(failed.sum())
    new.consolidate()
    return {**counts, "block_rows": new.block_rows, "store": new.uri}
