"""The candidate directions: cluster directions and the controls each one is compared with.

A world with one refusal direction, or with none, would also produce directions that act, so
every cluster direction is measured beside:

- the common direction (the normalised mean of all clustered discovery directions): the "one
  shared direction" candidate; a cluster direction that does no more adds nothing to it;
- size-matched random-subset means: the normalised mean of n clustered discovery directions
  drawn at random, n the cluster's size (`n_subsets` per cluster). Any mean of Option 1
  directions acts, and a small mean points elsewhere than a large one; this is the null for
  "this cluster is special". (With `EvalSettings.cluster_vector = 'diff_in_means'` the cluster,
  the common direction and the subsets are all differences in means instead: tasks.steps.
  cluster_vectors builds them, this module only averages what it is given);
- the difference in means (Arditi et al.), the published single-direction baseline;
- random unit directions (`n_random` per layer): what any vector of that norm does.

Only clusters, the common direction, the difference in means and the first `n_random_generate`
random directions get greedy replies (`Candidate.generate`); subsets and the other randoms are
scored by f and log-odds only (one forward pass per batch), which keeps 20 controls per cluster
affordable on a CPU. Subsets skip the side-effect KL too: no criterion reads it for them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Kind = Literal["cluster", "common", "baseline", "subset", "random"]


class EvaluationError(ValueError):
    """The evaluation cannot run as asked; the message names the fix."""


@dataclass(frozen=True)
class Candidate:
    """A direction to test: a unit vector [D] at a model layer. cluster: the cluster it is (or,
    for a subset, whose size it matches); generate: judged replies are generated for it."""

    name: str
    kind: Kind
    layer: int
    vector: np.ndarray = field(repr=False)
    cluster: int | None = None
    generate: bool = True


def build_candidates(
    cluster_directions: np.ndarray,
    cluster_layers: Sequence[int],
    baseline: Mapping[int, np.ndarray] | None,
    n_random: int,
    seed: int,
    default_layers: Sequence[int] = (),
    common: np.ndarray | None = None,
    subset_pool: np.ndarray | None = None,
    cluster_sizes: Sequence[int] = (),
    n_subsets: int = 0,
    n_random_generate: int | None = None,
    unit_pool: bool = True,
) -> list[Candidate]:
    """Cluster directions [K, D] at their layers, then per layer: the common direction (when
    given, [D]), the baseline ({layer: vector}, when given), n_subsets size-matched subset means
    per cluster (from subset_pool [n, D], the clustered discovery directions, with the clusters'
    sizes), and n_random seeded random unit directions. Without clusters the controls go to
    default_layers, so a clustering that found nothing still gets its baseline measured.
    n_random_generate: how many randoms per layer get replies (None: all); unit_pool: whether
    subset_pool's rows are normalised before a subset is averaged (subset_candidates)."""
    clusters = [Candidate(f"cluster {k}", "cluster", int(layer), _unit(v), k)
                for k, (v, layer) in enumerate(zip(cluster_directions, cluster_layers))]
    layers = sorted({c.layer for c in clusters}) or sorted({int(layer) for layer in default_layers})
    out = list(clusters)
    if common is not None:
        out += [Candidate(_at("common", layer, layers), "common", layer, _unit(common)) for layer in layers]
    if baseline is not None:
        missing = [layer for layer in layers if layer not in baseline]
        if missing:
            raise EvaluationError(f"no difference-in-means vector at layer(s) {missing}; compute concept vectors there.")
        out += [Candidate(_at("diff-in-means", layer, layers), "baseline", layer, _unit(baseline[layer]))
                for layer in layers]
    if n_subsets and subset_pool is not None:
        out += subset_candidates(subset_pool, clusters, cluster_sizes, n_subsets, seed, unit_pool)
    rng = np.random.default_rng(seed)
    dim = np.asarray(cluster_directions).shape[1] if len(cluster_directions) else np.asarray(common).shape[-1]
    judged = n_random if n_random_generate is None else n_random_generate
    for layer in layers:
        out += [Candidate(_at(f"random {i}", layer, layers), "random", layer, _unit(rng.standard_normal(dim)),
                          generate=i < judged)
                for i in range(n_random)]
    return out


def subset_candidates(pool: np.ndarray, clusters: Sequence[Candidate], sizes: Sequence[int], n_subsets: int,
                      seed: int, unit_pool: bool = True) -> list[Candidate]:
    """n_subsets means of random rows of pool [n, D] per cluster, each of the cluster's size, the
    rows normalised first when unit_pool (so each is built as its cluster's vector is).

    One generator per (seed, cluster), so a cluster's subsets do not change when another
    cluster is added or removed."""
    pool = np.asarray(pool, dtype=np.float64)
    unit = pool / np.linalg.norm(pool, axis=1, keepdims=True) if unit_pool else pool
    out = []
    for c, size in zip(clusters, sizes):
        rng = np.random.default_rng([seed, 1_000 + int(c.cluster)])
        size = int(min(max(size, 1), unit.shape[0]))
        for i in range(n_subsets):
            rows = rng.choice(unit.shape[0], size, replace=False)
            out.append(Candidate(f"subset {i} for cluster {c.cluster}", "subset", c.layer,
                                 _unit(unit[rows].mean(axis=0)), c.cluster, generate=False))
    return out


def _at(name: str, layer: int, layers: Sequence[int]) -> str:
    return name if len(layers) == 1 else f"{name} @L{layer}"


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    norm = np.linalg.norm(v)
    if not np.isfinite(norm) or norm == 0:
        raise EvaluationError("a candidate direction is zero or not finite; it cannot be evaluated.")
    return v / norm
