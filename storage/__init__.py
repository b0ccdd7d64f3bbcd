"""The atlas store: a Zarr v3 store of prompts, per-prompt refusal directions and their clusters.

Start with ``AtlasStore.create_or_open(uri, StoreSpec(...))`` in a pipeline, or
``AtlasStore.open(uri)`` to read. ``layout`` declares every array; ``spec`` the provenance.
This package imports neither torch, prefect, ``refusal_atlas.tasks`` nor ``refusal_atlas.flows``.
"""

# The folder sits at the top of the repository (the design card), but it is only ever imported as
# refusal_atlas.storage: a bare "storage" is a common name (Prefect keeps results in
# ~/.prefect/storage, which a worker can pick up as a namespace package), so importing it under
# that name would silently pick up, or shadow, something else.
if __name__ != "refusal_atlas.storage":
    raise ImportError(
        f"refusal-atlas's storage package was imported as {__name__!r}; import it as "
        "'refusal_atlas.storage' after 'pip install -e .' (or 'make install')."
    )


from refusal_atlas.storage.clusters import ClusterRun, cluster_run_name
from refusal_atlas.storage.errors import (
    StoreCorruptError,
    StoreError,
    StoreLockedError,
    StoreMismatchError,
    StoreSchemaError,
)
from refusal_atlas.storage.layout import (
    SCHEMA_VERSION,
    STATUS_DONE,
    STATUS_FAILED,
    STATUS_PENDING,
)
from refusal_atlas.storage.prompts import PromptRecord
from refusal_atlas.storage.spec import StoreSpec
from refusal_atlas.storage.store import AtlasStore
from refusal_atlas.storage.uri import validate_name

__all__ = [
    "SCHEMA_VERSION",
    "STATUS_DONE",
    "STATUS_FAILED",
    "STATUS_PENDING",
    "AtlasStore",
    "ClusterRun",
    "PromptRecord",
    "StoreCorruptError",
    "StoreError",
    "StoreLockedError",
    "StoreMismatchError",
    "StoreSchemaError",
    "StoreSpec",
    "cluster_run_name",
    "validate_name",
]
