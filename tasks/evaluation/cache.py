"""The evaluation's result on disk, keyed by what it was computed from.

The evaluation is the slow part of a run (every candidate is scored on every held-out prompt,
and a few dozen get greedy replies), and a rerun with no new prompts would compute exactly the
same numbers. So its result is kept as JSON, named by a hash of the directions it reads (the
store's data version and the clustering run's name), its settings and the source of the code
that computes it; a rerun with the same key reads the file in milliseconds. JSON, not pickle:
reading a cache file never runs code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from refusal_atlas.tasks.evaluation.evaluate import BaseMeasures, DirectionEffect, EvaluationResult
from refusal_atlas.tasks.evaluation.judge import JudgeSummary
from refusal_atlas.tasks.evaluation.settings import EvalSettings
from refusal_atlas.tasks.evaluation.specificity import Specificity
from refusal_atlas.tasks.steps.code_version import source_digest

#: The code an evaluation's numbers depend on: a change in any of it must miss the cache.
CODE = ("refusal_atlas.tasks.evaluation", "refusal_atlas.tasks.model", "refusal_atlas.tasks.engine",
        "refusal_atlas.tasks.clustering", "refusal_atlas.tasks.steps.heldout")


def cache_key(data_version: str, run_name: str, *settings: BaseModel) -> str:
    parts = {"data_version": data_version, "run": run_name, "code": source_digest(CODE),
             "settings": [s.model_dump(mode="json") for s in settings]}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def _default(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"cannot store {type(value).__name__} in the evaluation cache")


def dumps(result: EvaluationResult) -> str:
    return json.dumps(dataclasses.asdict(result), default=_default)


def loads(text: str) -> EvaluationResult:
    data = json.loads(text)
    base = dict(data["base"])
    for key in ("harmless_judge", "harmful_judge"):
        base[key] = None if base[key] is None else JudgeSummary(**base[key])
    for key in ("harmless_prompts", "harmful_prompts", "harmless_replies", "harmful_replies"):
        base[key] = tuple(base.get(key, ()))
    effects = []
    for e in data["effects"]:
        e = dict(e)
        for key in ("kl_ablate_prompts", "induce_df_prompts", "bypass_df_prompts", "induce_dlo_prompts",
                    "bypass_dlo_prompts", "induce_replies", "bypass_replies"):
            e[key] = tuple(e.get(key, ()))
        effects.append(DirectionEffect(**e))
    spec = data["specificity"]
    if spec is not None:
        spec = Specificity(np.array(spec["matrix"], dtype=np.float64), spec["rows"], spec["columns"], spec["n_prompts"],
                           None if spec["prompt_effects"] is None else np.array(spec["prompt_effects"], dtype=np.float64),
                           None if spec["prompt_cluster"] is None else np.array(spec["prompt_cluster"], dtype=np.int64),
                           spec.get("scale", "f"), spec.get("subset_means"))
    return EvaluationResult(EvalSettings(**data["settings"]), BaseMeasures(**base), effects, spec,
                            {int(k): float(v) for k, v in data["scales"].items()})


def cached(directory: Path, key: str, compute) -> tuple[EvaluationResult, bool]:
    """(result, True) from directory/evaluation-<key>.json when present and readable, else
    (compute(), False) after writing it there (atomically: a rerun never reads half a file)."""
    path = Path(directory) / f"evaluation-{key}.json"
    if path.exists():
        try:
            return loads(path.read_text()), True
        except (ValueError, KeyError, TypeError):
            pass  # an unreadable or older file is recomputed and replaced
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(dumps(result))
    tmp.replace(path)
    return result, False
