"""Planted direction sets for the null-model, stability and verdict tests, each clustered and
tested once per session (the functions are cached, so two test files share the work).

Sizes are modest on purpose (300 rows in D = 128, 20 surrogate sets and 20 bootstraps): the
whole null model of one set then takes about 10 s on 2 cores.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from refusal_atlas.tasks.clustering.spaces import SpaceClustering
from refusal_atlas.tasks.clustering.null_model import NullModelResult, cluster_rows, null_model
from refusal_atlas.tasks.clustering.stability import ClusterStability, bootstrap_stability
from refusal_atlas.tasks.settings import ClusterSettings
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


# -- a toy held-out evaluation ---------------------------------------------------------------


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@lru_cache(maxsize=None)
def toy_evidence(name: str, n_subsets: int = 20):
    """Held-out evidence for a planted case, built the way the evaluation builds it, under a
    linear response model: the effect of pushing prompt i along a unit direction c is
    r_i . c + noise, where r_i is the prompt's own (planted) refusal direction. That is the first-
    order change of f, whose gradient at h_0 is the prompt's direction.

    Held-out prompts are new draws around the same planted directions, assigned to the
    discovery clusters without refitting (approximate_predict). Returns (evidence per cluster,
    the common direction's effect per measure), the verdict's inputs besides the null model
    and the stability.
    """
    from refusal_atlas.tasks.clustering.spaces import approximate_predict
    from refusal_atlas.tasks.evaluation.intervals import bootstrap_difference, bootstrap_mean, share_beaten
    from refusal_atlas.tasks.evaluation.verdict import ClusterEvidence, MeasureEvidence

    found = case(name)
    held_out = {"three": lambda: three_directions(seed=1)[0], "one": lambda: one_direction(seed=1)[0]}[name]()
    labels = approximate_predict(found.observed, held_out)[0]
    discovery = _unit(found.rows.astype(np.float64))
    common = _unit(discovery.mean(axis=0))
    directions = found.observed.directions  # [K, DIM]
    rng = np.random.default_rng(11)
    responses = {  # measure -> effect of every candidate on every held-out prompt, [n, K + 1]
        measure: _unit(held_out) @ np.vstack([directions, common]).T
        + 0.05 * rng.standard_normal((len(held_out), len(directions) + 1))
        for measure in ("induce", "bypass")
    }
    clustered = np.flatnonzero(found.observed.labels >= 0)
    evidence = []
    for k, size in enumerate(found.observed.sizes):
        own = labels == k
        subsets = _unit(np.stack([discovery[rng.choice(clustered, size, replace=False)].mean(axis=0)
                                  for _ in range(n_subsets)]))  # [n_subsets, DIM]
        measures = []
        for measure, effect in responses.items():
            subset_effects = (_unit(held_out[own]) @ subsets.T).mean(axis=0) if own.any() else np.zeros(n_subsets)
            mine = float(effect[own, k].mean()) if own.any() else float("nan")
            measures.append(MeasureEvidence(
                measure, bootstrap_difference(effect[own, k], effect[own, -1], paired=True, seed=k),
                share_beaten(mine, subset_effects), n_subsets))
        others = [j for j in range(len(directions)) if j != k]
        own_effect = responses["induce"][own]
        index = own_effect[:, k] - own_effect[:, others].mean(axis=1) if others and own.any() else np.zeros(0)
        evidence.append(ClusterEvidence(k, bootstrap_mean(index, seed=k), tuple(measures)))
    common_effect = {measure: bootstrap_mean(effect[:, -1]) for measure, effect in responses.items()}
    return tuple(evidence), common_effect
