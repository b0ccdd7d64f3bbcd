"""Registering a run's prompts: read the sources, open or create the store, append new rows.

The store is keyed by the model's fingerprint, the position convention, the layers and the
method parameters, so registering needs the model loaded (for its fingerprint and depth).
What comes back is small and JSON-shaped: the flow fans out over it.
"""

from __future__ import annotations

import importlib.metadata
import threading
from dataclasses import asdict, dataclass

import numpy as np

from refusal_atlas.storage import AtlasStore, PromptRecord, StoreSpec
from refusal_atlas.tasks.engine.direction_engine import DirectionEngine
from refusal_atlas.tasks.prompts.records import load_prompts
from refusal_atlas.tasks.settings import AtlasSettings

_PACKAGES = ("refusal-atlas", "torch", "transformers", "prefect", "hdbscan", "dask")
# A plain instruction that every usable chat template renders verbatim.
_PROBE_TEXT = "Tell me about the sea."


@dataclass(frozen=True)
class PromptTask:
    """What one per-prompt task needs to know (and is cached on)."""

    prompt_id: str
    text_sha256: str
    row: int
    gradient: bool
    done: bool


@dataclass(frozen=True)
class Registration:
    store_uri: str
    store_uuid: str
    fingerprint: str
    layers: list[int]
    prompts: list[PromptTask]
    new: int
    read_summary: str

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Registration":
        return cls(**{**data, "prompts": [PromptTask(**p) for p in data["prompts"]]})


def package_versions() -> dict[str, str]:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def store_spec(engine: DirectionEngine, settings: AtlasSettings) -> StoreSpec:
    loaded = engine.loaded
    return StoreSpec(
        model_id=loaded.model_id,
        model_revision=loaded.revision or "",
        model_fingerprint=loaded.fingerprint,
        hidden_size=loaded.hidden_size,
        num_layers=loaded.num_layers,
        layers=tuple(engine.layers),
        position=settings.directions.position,
        method={**settings.directions.method_dict(), "dtype": str(loaded.dtype).removeprefix("torch.")},
        packages=package_versions(),
    )


_STORES: dict[tuple[str, str], AtlasStore] = {}
_STORES_LOCK = threading.Lock()


def writable_store(uri: str, store_uuid: str) -> AtlasStore:
    """The process's writable handle on a store, checked to be the store the run registered in."""
    with _STORES_LOCK:
        store = _STORES.get((uri, store_uuid))
        if store is None:
            store = AtlasStore.open(uri, "r+")
            if store.store_uuid != store_uuid:
                raise RuntimeError(
                    f"the store at {uri} is not the one this run registered its prompts in "
                    f"(uuid {store.store_uuid}, expected {store_uuid}): it was replaced during the "
                    "run. Rerun the flow."
                )
            _STORES[(uri, store_uuid)] = store
        return store


def register(settings: AtlasSettings, engine: DirectionEngine) -> Registration:
    """Read every prompt source, append the new prompts to the store, and list the work.

    Everything that would fail for every prompt is checked before the store is touched: the
    prompt files, and whether the chat template can give the position asked for (a template that
    rewrites the user's text has no 'instruction_end'), so such a run writes nothing.
    """
    prompts = load_prompts(settings.prompts)
    engine.render(_PROBE_TEXT)  # raises ChatTemplateError, naming the position to use instead
    store = AtlasStore.create_or_open(settings.store, store_spec(engine, settings))
    before = store.n_rows
    rows = store.register_prompts(
        PromptRecord(p.id, p.text, p.label, p.category or "", p.source) for p in prompts
    )
    status = store.status()
    gradient_labels = set(settings.directions.gradient_labels)
    tasks = [
        PromptTask(p.id, p.sha256, rows[p.id], p.label in gradient_labels, bool(status[rows[p.id]] == 1))
        for p in prompts
    ]
    return Registration(
        store_uri=store.uri,
        store_uuid=store.store_uuid,
        fingerprint=engine.loaded.fingerprint,
        layers=list(engine.layers),
        prompts=tasks,
        # New prompts always get rows past the old end (each registration starts a new block).
        new=sum(1 for row in set(rows.values()) if row >= before),
        read_summary=prompts.report.summary(),
    )


def done_summary(store: AtlasStore, rows: np.ndarray) -> dict:
    """Counts of done, failed and pending rows among `rows`."""
    status = store.status()[rows]
    return {"done": int((status == 1).sum()), "failed": int((status == 2).sum()), "pending": int((status == 0).sum())}
