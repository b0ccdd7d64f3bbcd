"""Planted direction sets for the null-model, stability and verdict tests, each clustered and
tested once per session (the functions are cached, so two test files share the work).

Sizes are modest on purpose (300 rows in D = 128, 20 surrogate sets and 20 bootstraps): the
whole null model of one set then takes about 10 s on 2 cores.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from tasks.cluster import SpaceClustering
from tasks.clustering.null_model import NullModelResult, cluster_rows, null_model
from tasks.clustering.stability import ClusterStability, bootstrap_stability
from tasks.settings import ClusterSettings
from tests.test_cluster_support import planted

SETTINGS = ClusterSettings(bootstraps=0)  # the defaults: residual space, PCA 32, min_cluster_size 5
N, DIM = 300, 128


def three_directions(n: int = N, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """K = 3 separated directions: each row a planted unit vector plus a shared component of
    varying size plus noise (rows [n, DIM], truth [n], centres [3, DIM]); seed draws new rows
    around the same centres."""
    return planted(n=n, dim=DIM, k=3, noise_share=0.0, common=1.0, seed=seed)


def one_direction(n: int = N, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One direction u plus isotropic noise (cosine to u about 0.78): rows [n, DIM], u [DIM]."""
    u = np.random.default_rng(100).standard_normal(DIM)
    u /= np.linalg.norm(u)
    rng = np.random.default_rng(seed)
    return u + 0.8 * rng.standard_normal((n, DIM)) / np.sqrt(DIM), u


def isotropic(n: int = N, seed: int = 0) -> np.ndarray:
    """Isotropic Gaussian rows [n, DIM]: no structure at all."""
    return np.random.default_rng(seed).standard_normal((n, DIM))


@dataclass(frozen=True)
class Case:
    rows: np.ndarray
    observed: SpaceClustering
    null: NullModelResult
    stability: ClusterStability | None


@lru_cache(maxsize=None)
def case(name: str, with_stability: bool = True) -> Case:
    """One planted set, clustered, with its null model (and its bootstrap stability)."""
    rows = {"three": lambda: three_directions()[0], "one": lambda: one_direction()[0], "isotropic": isotropic}[name]()
    observed = cluster_rows(rows, SETTINGS, "residual")
    null = null_model(rows, SETTINGS, observed=observed)
    stability = bootstrap_stability(rows, observed.labels, SETTINGS) if with_stability else None
    return Case(rows, observed, null, stability)
