"""Intervals: Wilson against known values, bootstrap coverage in a seeded simulation, edge cases."""

import numpy as np
import pytest

from refusal_atlas.tasks.evaluation.intervals import (
    Estimate,
    bootstrap_difference,
    bootstrap_mean,
    empirical_p,
    share_beaten,
    wilson,
)


def test_wilson_matches_known_values():
    none = wilson(0, 10)
    assert none.value == 0 and none.low == 0 and none.high == pytest.approx(0.2775, abs=1e-3)
    half = wilson(5, 10)
    assert (half.low, half.high) == pytest.approx((0.2366, 0.7634), abs=1e-3)
    every = wilson(10, 10)
    assert every.high == 1 and every.low == pytest.approx(1 - 0.2775, abs=1e-3)
    assert wilson(20, 64).format() == "0.31 [0.21, 0.43] (n=64)"


def test_wilson_rejects_impossible_counts_and_gives_nan_on_no_trials():
    with pytest.raises(ValueError):
        wilson(11, 10)
    assert np.isnan(wilson(0, 0).value)


def test_estimate_formats_and_says_whether_it_excludes_zero():
    assert Estimate(0.31, 0.22, 0.41, 64).format() == "0.31 [0.22, 0.41] (n=64)"
    assert Estimate(0.31, 0.22, 0.41, 64).excludes_zero
    assert Estimate(-0.3, -0.5, -0.1, 9).excludes_zero
    assert not Estimate(0.1, -0.1, 0.3, 9).excludes_zero
    assert not Estimate(0.1, float("nan"), float("nan"), 1).excludes_zero
    assert Estimate(0.1, float("nan"), float("nan"), 1).format() == "0.10 [nan, nan] (n=1)"


def test_bootstrap_interval_covers_the_true_mean_about_95_percent_of_the_time():
    # 300 seeded samples of 40 skewed (exponential) values with mean 1: the percentile interval
    # is slightly narrow on small skewed samples, so coverage lands a little under 95%.
    rng = np.random.default_rng(0)
    covered = [
        (lambda e: e.low <= 1.0 <= e.high)(bootstrap_mean(rng.exponential(1.0, 40), n_resamples=1000, seed=i))
        for i in range(300)
    ]
    assert 0.89 <= np.mean(covered) <= 0.98, np.mean(covered)


def test_difference_interval_covers_the_true_difference():
    rng = np.random.default_rng(1)
    covered = []
    for i in range(200):
        a, b = rng.normal(0.5, 1.0, 50), rng.normal(0.0, 2.0, 30)
        e = bootstrap_difference(a, b, n_resamples=1000, seed=i)
        covered.append(e.low <= 0.5 <= e.high)
        assert e.n == 80
    assert 0.89 <= np.mean(covered) <= 0.99, np.mean(covered)


def test_pairing_removes_shared_prompt_variation():
    rng = np.random.default_rng(2)
    prompt = rng.normal(0, 5, 60)  # a large per-prompt effect both candidates share
    a, b = prompt + 0.3 + rng.normal(0, 0.1, 60), prompt + rng.normal(0, 0.1, 60)
    paired, unpaired = bootstrap_difference(a, b, paired=True), bootstrap_difference(a, b)
    assert paired.low > 0.2 and paired.high < 0.4 and paired.n == 60
    assert not unpaired.excludes_zero
    with pytest.raises(ValueError):
        bootstrap_difference(a, b[:10], paired=True)


def test_bootstrap_is_seeded_and_handles_tiny_samples():
    x = np.arange(10.0)
    assert bootstrap_mean(x, seed=3) == bootstrap_mean(x, seed=3)
    assert np.isnan(bootstrap_mean([]).value)
    single = bootstrap_mean([2.0])
    assert single.value == 2.0 and np.isnan(single.low)
    with pytest.raises(ValueError):
        bootstrap_mean([1.0, np.nan])


def test_ranks_and_empirical_p_values():
    null = np.arange(20.0)  # 0..19
    assert share_beaten(19.5, null) == 1.0 and share_beaten(10.0, null) == 0.5
    assert empirical_p(100.0, null) == pytest.approx(1 / 21)
    assert empirical_p(0.0, null) == 1.0
