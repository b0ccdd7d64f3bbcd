"""The base of every settings model: unknown keys are errors and settings never change.

Frozen, so that a settings object handed to a task is the one its cache key was computed from;
extra="forbid", so that a misspelt key in a settings file or the Prefect form is an error rather
than a silently ignored option.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
