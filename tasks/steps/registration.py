"""Registering a run's prompts: read the sources, open or create the store, append new rows.

The store is keyed by the model's fingerprint, the position convention, the layers and the
method parameters, so registering needs the model loaded (for its fingerprint and depth).
What comes back is small and JSON-shaped: the flow fans out over it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from refusal_atlas.storage import STATUS_DONE, AtlasStore, StoreSpec
from refusal_atlas.storage.spec import package_versions
from refusal_atlas.tasks.engine.direction_engine import DirectionEngine
from refusal_atlas.tasks.prompts.records import PromptSet
from refusal_atlas.tasks.settings import AtlasSettings

# Versions recorded in the store beside the ones the store records itself (zarr, numpy, python).
_PACKAGES = ("torch", "transformers", "prefect", "hdbscan", "dask")
# A plain instruction that every usable chat template renders verbatim.
_PROBE_TEXT = "Tell me about the sea."


@dataclass(frozen=True)
class PromptTask:
    """A work order for one per-prompt task: the prompt's identity as registration computed it
    (id and text hash, passed forward, never read back), its row, whether it takes gradient
    steps, and whether the store already held its row as done when the run registered."""

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
        packages=package_versions(_PACKAGES),
    )


def register(settings: AtlasSettings, engine: DirectionEngine, prompts: PromptSet) -> Registration:
    """Append the new prompts (read by ``load_prompts`` before the model was loaded, so a bad
    prompt file is reported in seconds) to the store, and list the work.

    Everything that would fail for every prompt is checked before the store is touched: the
    prompt files, and whether the chat template can give the position asked for (a template that
    rewrites the user's text has no 'instruction_end'), so such a run writes nothing.
    """
    engine.render(_PROBE_TEXT)  # raises ChatTemplateError, naming the position to use instead
    store = AtlasStore.create_or_open(settings.store, store_spec(engine, settings))
    before = store.n_rows
    rows = store.register_prompts(prompts)
    status = store.status()
    gradient_labels = set(settings.directions.gradient_labels)
    tasks = [
        PromptTask(p.id, p.sha256, rows[p.id], p.label in gradient_labels, bool(status[rows[p.id]] == STATUS_DONE))
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
