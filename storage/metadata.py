"""The store's metadata life cycle: create it (provenance written last), check it, consolidate it.

Consolidated metadata puts every array's metadata into the root ``zarr.json`` so that a reader
(xarray, Dask, a remote store) opens the whole store with one read. It is a snapshot: after it
is written, any change of shape or of the group tree must write it again, or readers would see
the old shapes. The store does that (``reconsolidate_if_present``) after every such change, and
its writers never read it (they open with ``use_consolidated=False``).
"""

from __future__ import annotations

import os
import uuid
import warnings

from refusal_atlas.storage.errors import StoreSchemaError
from refusal_atlas.storage.layout import (
    ATTRS_KEY,
    CLUSTERS_GROUP,
    LAYER_COORD,
    PENDING_GROUP,
    PER_PROMPT,
    create_root_arrays,
)
from refusal_atlas.storage.spec import StoreSpec, check_compatible, read_provenance
from refusal_atlas.storage.uri import StoreLocation


def ensure_store(location: StoreLocation, spec: StoreSpec, block_rows: int) -> None:
    """Create the store from ``spec`` if there is none, else check it matches ``spec``.

    Caller holds the run lock. The provenance attributes are written last, so a creation that
    was interrupted leaves a group without them, which the next call simply creates again.
    """
    import zarr

    store = location.zarr_store(read_only=False)
    try:
        root = zarr.open_group(store, mode="r+", use_consolidated=False)
    except FileNotFoundError:
        root = None
    if root is not None and ATTRS_KEY in root.attrs:
        check_compatible(read_provenance(root.attrs, location.uri), spec, location.uri)
        return
    _check_new_location(location)
    root = zarr.open_group(store, mode="a", use_consolidated=False)
    create_root_arrays(root, len(spec.layers), spec.hidden_size, spec.layers, block_rows)
    root.attrs[ATTRS_KEY] = spec.provenance(str(uuid.uuid4()), block_rows)


def _check_new_location(location: StoreLocation) -> None:
    """Refuse to turn a non-empty local directory that is no atlas store into one."""
    path = location.local_path
    if path is None or not path.is_dir():
        return
    known = {"zarr.json", CLUSTERS_GROUP, PENDING_GROUP} | {a.name for a in (*PER_PROMPT, LAYER_COORD)}
    stray = sorted(set(os.listdir(path)) - known)
    if stray:
        raise StoreSchemaError(
            f"{location.uri} is not empty and not a refusal-atlas store (it holds {stray[:5]}); "
            "give a new path for a new store"
        )


def consolidate(store) -> None:
    """Write consolidated metadata for the zarr ``store``."""
    import zarr

    with warnings.catch_warnings():
        # zarr warns that consolidated metadata is not part of the v3 spec yet; only zarr-python
        # and xarray read it back here, and both understand it.
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        # The pending group holds .row files, which are no zarr objects; zarr says so per file.
        warnings.filterwarnings("ignore", message="Object at pending", category=UserWarning)
        zarr.consolidate_metadata(store)


def reconsolidate_if_present(store) -> None:
    """Rewrite the consolidated metadata if the store has any, so that it stays current."""
    import zarr

    if zarr.open_group(store, mode="r").metadata.consolidated_metadata is not None:
        consolidate(store)
