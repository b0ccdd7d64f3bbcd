"""Shared helpers of the clustering, evaluation and report tests: planted direction sets."""

from __future__ import annotations

import numpy as np


def planted(
    n: int = 2000,
    dim: int = 576,
    k: int = 5,
    noise_share: float = 0.05,
    spread: float = 0.8,
    common: float = 0.0,
    common_range: tuple[float, float] = (0.2, 3.0),
    seed: int = 0,
    centre_seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit-ish directions [n, dim] around k orthonormal centres, plus uniformly random noise rows.

    Returns (directions float32, truth labels with -1 for noise rows, centres [k, dim]). Each
    member is centre + spread * gaussian / sqrt(dim) (cosine to its centre about 0.78 at the
    default spread). With common > 0 every row, noise included, also gets a shared direction m
    (orthogonal to the centres) times common * uniform(common_range): a shared component whose
    size varies by row, as the real directions have. centre_seed fixes the centres, so two calls
    with different seeds draw new points around the same clusters.
    """
    basis = np.linalg.qr(np.random.default_rng(centre_seed).standard_normal((dim, k + 1)))[0].T
    centres, shared = basis[:k], basis[k]
    rng = np.random.default_rng(seed)
    n_noise = int(round(n * noise_share))
    truth = np.r_[rng.integers(0, k, n - n_noise), -np.ones(n_noise, dtype=int)]
    x = np.empty((n, dim))
    members = truth >= 0
    x[members] = centres[truth[members]] + spread * rng.standard_normal((members.sum(), dim)) / np.sqrt(dim)
    x[~members] = rng.standard_normal(((~members).sum(), dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    if common:
        x += (common * rng.uniform(*common_range, size=n))[:, None] * shared
    return x.astype(np.float32), truth, centres
