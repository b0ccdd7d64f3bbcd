"""The atlas store: a Zarr v3 store of prompts, per-prompt refusal directions and their clusters.

Start with ``AtlasStore.create_or_open(uri, StoreSpec(...))`` in a pipeline, or
``AtlasStore.open(uri)`` to read. ``layout`` declares every array; ``spec`` the provenance.
This package imports neither torch, prefect, ``tasks`` nor ``flows``.
"""

from storage.clusters import ClusterRun, cluster_run_name
from storage.errors import (
    StoreCorruptError,
    StoreError,
    StoreLockedError,
    StoreMismatchError,
    StoreSchemaError,
)
from storage.layout import (
    SCHEMA_VERSION,
    STATUS_DONE,
    STATUS_FAILED,
    STATUS_PENDING,
)
from storage.prompts import PromptRecord
from storage.spec import StoreSpec
from storage.store import AtlasStore
from storage.uri import validate_name

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
