"""Intervals for the figures a report quotes: Wilson intervals for rates, percentile bootstrap
intervals for means and differences of means.

Every figure the verdict reads comes with an interval, so that a difference of a few hundredths
between two candidates is never read as a finding when the sample cannot resolve it. The
bootstrap is seeded, so a rerun on the same numbers quotes the same interval, and vectorised:
all resamples are drawn as one index matrix [n_resamples, n] (in blocks, so a large sample never
needs one huge matrix).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

#: The number of resamples by default: with 2,000 resamples the 2.5% and 97.5% percentiles sit
#: on 50 resamples each, enough that the interval's ends move by little from seed to seed.
N_RESAMPLES = 2_000
#: Resampled values held in memory at once (rows x sample size); larger jobs go in blocks.
_BLOCK_VALUES = 4_000_000


@dataclass(frozen=True)
class Estimate:
    """A figure with its interval: value, low, high (NaN when undefined) and the sample size n."""

    value: float
    low: float
    high: float
    n: int

    @property
    def excludes_zero(self) -> bool:
        """True when the whole interval lies on one side of zero (NaN bounds never do)."""
        return bool(self.low > 0 or self.high < 0)

    def format(self, digits: int = 2) -> str:
        """'0.31 [0.22, 0.41] (n=64)'."""
        def number(x: float) -> str:
            return "nan" if not math.isfinite(x) else f"{x:.{digits}f}"

        return f"{number(self.value)} [{number(self.low)}, {number(self.high)}] (n={self.n})"


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, not {confidence}.")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson(k: int, n: int, confidence: float = 0.95) -> Estimate:
    """The Wilson score interval for a rate of k successes in n trials.

    Chosen over the normal (Wald) interval because judged-reply rates are often near 0 or 1 on
    a few dozen prompts, where the Wald interval collapses to a point (0 of 10 would read
    [0, 0]) while Wilson's stays honest (0 of 10: [0, 0.28]). n = 0 gives NaN throughout.
    """
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"a rate needs 0 <= k <= n, not k={k}, n={n}.")
    if n == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    z = _z(confidence)
    p = k / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # At k = 0 the lower bound is exactly 0 (and at k = n the upper exactly 1); computed, they
    # carry rounding error of 1e-17, which would print as a rate above zero.
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return Estimate(p, low, high, n)


def _resampled_means(values: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Means of n_resamples resamples with replacement of values [n] -> [n_resamples]."""
    n = values.size
    rows = max(1, _BLOCK_VALUES // max(n, 1))
    out = np.empty(n_resamples)
    for start in range(0, n_resamples, rows):
        stop = min(start + rows, n_resamples)
        out[start:stop] = values[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    return out


def _percentile_estimate(value: float, resampled: np.ndarray, n: int, confidence: float) -> Estimate:
    _z(confidence)  # validates confidence
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(resampled, [tail, 100 - tail])
    return Estimate(float(value), float(low), float(high), int(n))


def _finite(values, name: str) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64).ravel()
    if not np.isfinite(x).all():
        raise ValueError(f"{name} holds {int((~np.isfinite(x)).sum())} values that are not finite; drop them first.")
    return x


def bootstrap_mean(values, n_resamples: int = N_RESAMPLES, confidence: float = 0.95, seed: int = 0) -> Estimate:
    """The mean of values [n] with a percentile bootstrap interval (seeded).

    Fewer than 2 values give the mean with a NaN interval: one value says nothing about spread.
    """
    x = _finite(values, "values")
    if x.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    if x.size < 2:
        return Estimate(float(x.mean()), float("nan"), float("nan"), int(x.size))
    means = _resampled_means(x, n_resamples, np.random.default_rng(seed))
    return _percentile_estimate(x.mean(), means, x.size, confidence)


def bootstrap_difference(
    a,
    b,
    paired: bool = False,
    n_resamples: int = N_RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """mean(a) - mean(b) with a percentile bootstrap interval (seeded).

    paired=True: a [n] and b [n] are two measurements on the same prompts (a cluster direction
    and the common direction on the same held-out prompts), so the prompts are resampled once
    and the interval is that of the mean per-prompt difference; pairing removes the prompt-to-
    prompt variation the two share, which is most of it. paired=False: a [n_a] and b [n_b] are
    independent samples (a cluster's own prompts against the other clusters' prompts), each
    resampled on its own; n is then n_a + n_b.
    """
    x, y = _finite(a, "a"), _finite(b, "b")
    if paired:
        if x.size != y.size:
            raise ValueError(f"paired samples need the same length, not {x.size} and {y.size}.")
        return bootstrap_mean(x - y, n_resamples, confidence, seed)
    if x.size == 0 or y.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), int(x.size + y.size))
    value = x.mean() - y.mean()
    if x.size < 2 or y.size < 2:
        return Estimate(float(value), float("nan"), float("nan"), int(x.size + y.size))
    rng = np.random.default_rng(seed)
    differences = _resampled_means(x, n_resamples, rng) - _resampled_means(y, n_resamples, rng)
    return _percentile_estimate(value, differences, x.size + y.size, confidence)


def share_beaten(value: float, null_values) -> float:
    """The share of null values [m] strictly below value (the rank of a candidate among its
    controls, e.g. a cluster direction's effect among size-matched random-subset means)."""
    null = _finite(null_values, "null_values")
    return float(np.mean(null < value)) if null.size else float("nan")


def empirical_p(observed: float, null_values) -> float:
    """One-sided empirical p-value (1 + #{null >= observed}) / (1 + m).

    The +1 counts the observed value as one draw from the null (Davison and Hinkley 1997;
    North et al. 2002), so the p-value is never 0 and is valid for any number of draws; with
    m = 20 the smallest possible value is 1/21 = 0.048.
    """
    null = _finite(null_values, "null_values")
    return float((1 + np.sum(null >= observed)) / (1 + null.size))
