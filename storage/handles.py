"""The process's writable store handles, shared by every task of a run that runs in the process.

Opening a store reads its metadata and builds its prompt index; per-prompt tasks would do that
thousands of times, so each process keeps one handle per (URI, store UUID) and checks, when it
first opens one, that the store is the one the run registered its prompts in.
"""

from __future__ import annotations

import threading

from refusal_atlas.storage.errors import StoreMismatchError
from refusal_atlas.storage.store import AtlasStore

_STORES: dict[tuple[str, str], AtlasStore] = {}
_STORES_LOCK = threading.Lock()


def writable_store(uri: str, store_uuid: str) -> AtlasStore:
    """The process's writable handle on a store, checked to be the store the run registered in."""
    with _STORES_LOCK:
        store = _STORES.get((uri, store_uuid))
        if store is None:
            store = AtlasStore.open(uri, "r+")
            if store.store_uuid != store_uuid:
                raise StoreMismatchError(
                    f"the store at {uri} is not the one this run registered its prompts in "
                    f"(uuid {store.store_uuid}, expected {store_uuid}): it was replaced during the "
                    "run. Rerun the flow."
                )
            _STORES[(uri, store_uuid)] = store
        return store
