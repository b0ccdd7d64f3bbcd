"""One prompt's row: ask the process's engine for its directions and stage them in the store.

The store keeps rows in blocks with one writer each, so a per-prompt task does not write its
block: it stages its row (``pending/r<row>.row``, kept even if the run is killed), and the flow's
block writer (``write_blocks``) gathers a block once its rows have finished. A row that is
already done or staged is not computed again (the store is the record of what exists, whatever
Prefect's cache holds), and a row that fails is staged as failed with its reason, never done, so
a rerun retries exactly the rows that are missing.
"""

from __future__ import annotations

import errno

import numpy as np

from refusal_atlas.storage import STATUS_DONE
from refusal_atlas.storage.identity import text_sha256 as sha256_of
from refusal_atlas.tasks.engine.direction_engine import PromptDirections, get_engine
from refusal_atlas.storage.handles import writable_store
from refusal_atlas.tasks.settings import DirectionSettings, EngineSettings, ModelSettings


class RowFailed(RuntimeError):
    """A prompt's row could not be computed, for a reason that a retry would not change."""


def row_arrays(result: PromptDirections) -> dict[str, np.ndarray]:
    """The store's row arrays from an engine result."""
    return {
        "h0": result.h0,
        "point": result.point,
        "anchor": result.anchor,
        "direction": result.direction,
        "f0": result.f0,
        "f_point": result.f_point,
        "f_anchor": result.f_anchor,
        "effect": result.effect,
        "steps_taken": result.steps,
        "best_layer": np.int16(result.best_layer),
    }


def row_problem(result: PromptDirections, layers: list[int]) -> str | None:
    """Why a computed row must not count as done: the engine's own reason (a zero or non-finite
    gradient, a non-finite f), or a non-finite h_0 or f(h_0), which every row needs, those that
    take no gradient steps too (harmless rows anchor Option 2 with their h_0)."""
    if result.error is not None:
        return result.error
    problems = []
    for layer, h0, f0 in zip(layers, result.h0, result.f0):
        if not np.isfinite(h0).all():
            problems.append(f"layer {layer}: h_0 is not finite")
        elif not np.isfinite(f0):
            problems.append(f"layer {layer}: f(h_0) is not finite")
    return "; ".join(problems) or None


def summary(prompt_id: str, row: int, data: dict, computed: bool) -> dict:
    """A small JSON-serialisable summary of a row (Prefect persists and hashes task results)."""
    def floats(values) -> list[float | None]:
        return [None if not np.isfinite(v) else round(float(v), 5) for v in np.asarray(values).ravel()]

    return {
        "prompt_id": prompt_id,
        "row": int(row),
        "status": "done",
        "computed": computed,
        "f0": floats(data["f0"]),
        "f_point": floats(data["f_point"]),
        "effect": floats(data["effect"]),
        "best_layer": int(np.asarray(data["best_layer"]).reshape(-1)[0]),
    }


def extract_row(
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
    """Compute and store one prompt's row; return its summary. Raises RowFailed on a prompt
    that cannot be computed (after marking its row failed with the reason)."""
    store = writable_store(store_uri, store_uuid)
    stored = store.read_rows([row], ("prompt_id", "text", "status"))
    text = str(stored["text"][0])
    if stored["prompt_id"][0] != prompt_id or sha256_of(text) != text_sha256:
        raise RowFailed(f"row {row} of {store_uri} does not hold prompt {prompt_id}; the store changed under the run")
    if stored["status"][0] == STATUS_DONE:
        return summary(prompt_id, row, store.read_rows([row], ("f0", "f_point", "effect", "best_layer")), computed=False)
    staged = store.staged(row)
    if staged is not None and not staged.failed and staged.prompt_id == prompt_id:
        return summary(prompt_id, row, {k: v[np.newaxis] for k, v in staged.data.items()}, computed=False)

    runner = get_engine(model, directions, engine)
    if runner.loaded.fingerprint != fingerprint:
        raise RowFailed(
            f"this worker loaded a model with fingerprint {runner.loaded.fingerprint}, but the store "
            f"holds rows of {fingerprint}: every worker must load the same model files."
        )
    try:
        result = runner.compute(text, gradient=gradient)
    except ValueError as err:  # rendering: too long for the context, an unusable template
        store.stage_failure(row, str(err))
        raise RowFailed(f"prompt {prompt_id}: {err}") from err
    problem = row_problem(result, runner.layers)
    if problem is not None:
        store.stage_failure(row, problem)
        raise RowFailed(f"prompt {prompt_id}: {problem}")
    data = row_arrays(result)
    try:
        store.stage_row(row, data)
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # Same errno, so callers still see a full disk; the words say what it means for the run.
        raise OSError(err.errno, f"the disk holding {store_uri} is full ({err.strerror}): row {row} "
                      f"(prompt {prompt_id}) was not written and stays pending; rows already staged or "
                      "written are kept. Free space, then rerun the same command.") from err
    return summary(prompt_id, row, data, computed=True)


def write_blocks(store_uri: str, store_uuid: str, blocks: list[int] | None = None) -> dict:
    """Gather the staged rows of ``blocks`` (all staged rows if None) into their blocks.

    Only the run that holds the store's lease calls this, from one place, so each block has one
    writer; it is what turns staged rows into done rows.
    """
    return writable_store(store_uri, store_uuid).write_pending(blocks)
