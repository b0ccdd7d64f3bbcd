"""A cache policy over the source of the code that computes a result, not just its task wrapper.

Prefect's ``TASK_SOURCE`` hashes the decorated function's own lines. Here that is a one-line
wrapper, so editing the engine or the clustering would leave every cache key as it was and a
rerun would serve results the new code never computed. ``CodeVersion`` hashes the source files
of whole packages instead: the wings whose code determines a result.
"""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from prefect.cache_policies import CachePolicy


@lru_cache(maxsize=None)
def source_digest(packages: tuple[str, ...]) -> str:
    """SHA-256 over the .py files of the named packages (or modules), in a stable order.

    Read once per process: a worker's code does not change while it runs.
    """
    digest = hashlib.sha256()
    for name in packages:
        module = importlib.import_module(name)
        origin = Path(module.__file__)
        files = sorted(origin.parent.rglob("*.py")) if origin.name == "__init__.py" else [origin]
        for path in files:
            digest.update(str(path.relative_to(origin.parent)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


@dataclass
class CodeVersion(CachePolicy):
    """A cache key part that changes whenever a source file of ``packages`` changes."""

    packages: tuple[str, ...] = ()

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any] | None,
                    flow_parameters: dict[str, Any] | None, **kwargs: Any) -> str | None:
        return source_digest(self.packages)
