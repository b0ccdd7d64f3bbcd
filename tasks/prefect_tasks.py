"""Thin Prefect task entry points over the plain functions of `tasks`.

Tasks pass ids, store URIs and small JSON summaries, never tensors or models: Prefect hashes
task inputs for cache keys and persists results (as JSON here) so that caching works across
runs and processes.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import INPUTS, TASK_SOURCE

from tasks import concepts, extraction, registration
from tasks.settings import AtlasSettings, DirectionSettings, EngineSettings, ModelSettings

# A row is determined by the prompt (id and text hash), the model (fingerprint), the method
# (direction settings) and the store it lives in (its UUID, so a fresh store never reuses stale
# records), and by this code. Where the row sits, which settings spelt the model's location and
# how the engine batches do not change it.
EXTRACT_CACHE = (INPUTS - "row" - "store_uri" - "model" - "engine") + TASK_SOURCE


def _retry_transient(task, task_run, state) -> bool:
    """Retry unless the prompt failed for a reason a retry cannot change (RowFailed)."""
    try:
        state.result()
    except extraction.RowFailed:
        return False
    except Exception:  # noqa: BLE001 - anything else may be transient (I/O, a worker lost)
        return True
    return True


@task(name="register-prompts", retries=1, retry_delay_seconds=2)
def register_prompts(settings: AtlasSettings) -> dict:
    """Read the prompt sources afresh and append new prompts to the store."""
    from tasks.engine import get_engine

    engine = get_engine(settings.model, settings.directions, settings.engine)
    return registration.register(settings, engine).as_dict()


@task(
    name="extract-directions",
    task_run_name="extract-{prompt_id}",
    cache_policy=EXTRACT_CACHE,
    persist_result=True,
    result_serializer="json",
    retries=2,
    retry_delay_seconds=1,
    retry_jitter_factor=0.5,
    retry_condition_fn=_retry_transient,
)
def extract_prompt(
    prompt_id: str,
    text_sha256: str,
    row: int,
    gradient: bool,
    store_uri: str,
    store_uuid: str,
    fingerprint: str,
    model: ModelSettings,
    directions: DirectionSettings,
    engine: EngineSettings,
) -> dict:
    """One prompt's directions, computed by the process's engine and written to its row."""
    return extraction.extract_row(
        prompt_id, text_sha256, row, gradient, store_uri, store_uuid, fingerprint, model, directions, engine
    )


@task(name="concept-vectors", retries=2, retry_delay_seconds=2)
def concept_vectors(store_uri: str, store_uuid: str) -> dict:
    """Option 2 directions and the difference-in-means baseline from the done rows."""
    return concepts.compute_concepts(store_uri, store_uuid)
