"""Thin Prefect task entry points over the plain functions of `tasks`.

Tasks pass ids, store URIs and small JSON summaries, never tensors or models: Prefect hashes
task inputs for cache keys and persists results (as JSON here) so that caching works across
runs and processes.
"""

from __future__ import annotations

import errno

from prefect import task
from prefect.cache_policies import INPUTS, NO_CACHE

from refusal_atlas.storage import StoreError
from refusal_atlas.tasks.steps import analysis
from refusal_atlas.tasks.steps import concepts
from refusal_atlas.tasks.steps import extraction
from refusal_atlas.tasks.steps import registration
from refusal_atlas.tasks.steps.code_version import CodeVersion
from refusal_atlas.tasks.model.loading import ModelLoadError
from refusal_atlas.tasks.settings import AtlasSettings, ClusterSettings

# A row is determined by the prompt (id and text hash), the model (fingerprint), the method
# (direction settings) and the store it lives in (its UUID, so a fresh store never reuses stale
# records), and by the code that computes and writes it: the model wing (loading, chat template,
# hooks), the engine wing, the extraction step and the store. Where the row sits, which
# settings spelt the model's location and how the engine batches do not change it.
EXTRACT_CACHE = (INPUTS - "row" - "store_uri" - "model" - "engine") + CodeVersion(packages=(
    "refusal_atlas.tasks.model", "refusal_atlas.tasks.engine", "refusal_atlas.tasks.steps.extraction",
    "refusal_atlas.storage",
))
# A clustering is determined by the rows clustered (the store's data version, which hashes the
# store UUID, the method and the done prompt ids), the clustering parameters, and the code of the
# clustering wing, the discovery / held-out split, the analysis step and the store.
CLUSTER_CACHE = (INPUTS - "store_uri") + CodeVersion(packages=(
    "refusal_atlas.tasks.clustering", "refusal_atlas.tasks.evaluation.split", "refusal_atlas.tasks.steps.analysis",
    "refusal_atlas.storage",
))


def _retry_transient(task, task_run, state) -> bool:
    """Retry unless the failure is one a retry cannot change: a prompt that cannot be computed
    (RowFailed), bad input or settings (ValueError, e.g. too few directions to cluster, a prompt
    file or chat template that cannot be used; LookupError, e.g. a layer the model does not have)
    or a store that refuses (StoreError: held by another run, damaged, or not writable), or a
    full disk."""
    try:
        state.result()
    except (extraction.RowFailed, ValueError, LookupError, StoreError):
        return False
    except ModelLoadError as err:
        # A path that does not exist stays missing; reading the hub or a file may work next time.
        return isinstance(err.__cause__, OSError)
    except OSError as err:
        # A full disk needs a person to free space, not another try a second later.
        return err.errno not in (errno.ENOSPC, errno.EDQUOT)
    except Exception:  # noqa: BLE001 - anything else may be transient (I/O, a worker lost)
        return True
    return True


@task(name="register-prompts", retries=1, retry_delay_seconds=2, result_serializer="json",
      retry_condition_fn=_retry_transient)
def register_prompts(settings: AtlasSettings) -> dict:
    """Read the prompt sources afresh and append new prompts to the store."""
    from refusal_atlas.tasks.engine.direction_engine import get_engine
    from refusal_atlas.tasks.prompts.records import load_prompts

    # The prompt files first: a missing file or a malformed line is reported in seconds, before
    # the model (tens of seconds) is loaded.
    prompts = load_prompts(settings.prompts)
    engine = get_engine(settings.model, settings.directions, settings.engine)
    return registration.register(settings, engine, prompts).as_dict()


# What the two cached tasks share: their results persist (caching needs them) as JSON, and a
# failure a retry could change is retried twice, with jitter so that retries spread out.
_CACHED_AND_RETRIED = {
    "persist_result": True,
    "result_serializer": "json",
    "retries": 2,
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": _retry_transient,
}


# One prompt's directions, computed by the process's engine and written to its row: the step
# itself is the task, so that its signature (the cache key's inputs) is written once.
extract_prompt = task(
    name="extract-directions", task_run_name="extract-{prompt_id}", cache_policy=EXTRACT_CACHE,
    retry_delay_seconds=1, **_CACHED_AND_RETRIED,
)(extraction.extract_row)


# Never cached: the gather at the start and the one at the end of a run have the same inputs but
# find different staged rows, and a cached answer would leave rows staged.
@task(name="write-blocks", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1, result_serializer="json",
      retry_condition_fn=_retry_transient)
def write_blocks(store_uri: str, store_uuid: str, blocks: list[int] | None = None) -> dict:
    """Write the staged rows of whole blocks into the store (all staged rows if ``blocks`` is None)."""
    return extraction.write_blocks(store_uri, store_uuid, blocks)


@task(name="concept-vectors", retries=2, retry_delay_seconds=2, result_serializer="json")
def concept_vectors(store_uri: str, store_uuid: str) -> dict:
    """Option 2 directions and the difference-in-means baseline from the done rows."""
    return concepts.compute_concepts(store_uri, store_uuid)


@task(name="cluster-directions", cache_policy=CLUSTER_CACHE, retry_delay_seconds=2, **_CACHED_AND_RETRIED)
def cluster(store_uri: str, store_uuid: str, data_version: str, settings: ClusterSettings) -> dict:
    """HDBSCAN over the done directions, raw and residual; the run is written to the store."""
    return analysis.cluster_step(store_uri, store_uuid, data_version, settings)


@task(name="evaluate-and-report", retries=1, retry_delay_seconds=2, result_serializer="json",
      retry_condition_fn=_retry_transient)
def evaluate_and_report(settings: AtlasSettings, store_uri: str, store_uuid: str, run_name: str,
                        run_summary: dict) -> dict:
    """Evaluate the cluster directions against the baseline and random controls; write the report."""
    return analysis.evaluate_and_report(settings, store_uri, store_uuid, run_name, run_summary)
