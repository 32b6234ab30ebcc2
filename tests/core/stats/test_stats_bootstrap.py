"""Intervals against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from core.stats.bootstrap import (Interval, bootstrap_mean, combine_seeds, mad_interval, minimum_detectable_difference,
                        paired_difference)


def test_bootstrap_of_two_values_matches_the_exact_resampling_law() -> None:
    # Resampling [0, 10] twice gives means 0, 5, 10 with probabilities 1/4, 1/2, 1/4:
    # the 30th and 70th percentiles are both 5, the 2.5th is 0 and the 97.5th is 10.
    values = np.array([0.0, 10.0])
    narrow = bootstrap_mean(values, resamples=4000, level=0.4)
    assert (narrow.estimate, narrow.low, narrow.high) == (5.0, 5.0, 5.0)
    wide = bootstrap_mean(values, resamples=4000)
    assert (wide.low, wide.high) == (0.0, 10.0)


def test_constant_errors_have_no_width_and_mad_is_the_mean_absolute_error() -> None:
    interval = mad_interval(np.array([10.0, 20.0, 30.0]), np.array([13.0, 17.0, 27.0]))
    assert interval == Interval(3.0, 3.0, 3.0)  # |errors| = 3, 3, 3


def test_paired_difference_cancels_the_images_own_difficulty() -> None:
    # b is a plus 1 month on every image: the paired difference is exactly -1 with no width,
    # although the images' errors spread from 0 to 40 months.
    a = np.array([0.0, 10.0, 20.0, 40.0])
    difference = paired_difference(a, a + 1.0)
    assert difference == Interval(-1.0, -1.0, -1.0)
    assert difference.excludes_zero
    assert minimum_detectable_difference(a, a + 1.0) == 0.0
    unpaired = bootstrap_mean(a)
    assert unpaired.high - unpaired.low > 10.0


def test_difference_of_equal_models_includes_zero() -> None:
    rng = np.random.default_rng(1)
    a = rng.exponential(10.0, size=200)
    b = a + rng.normal(0.0, 3.0, size=200)
    interval = paired_difference(a, b)
    assert interval.low < 0.0 < interval.high
    assert not interval.excludes_zero
    assert minimum_detectable_difference(a, b) == pytest.approx((interval.high - interval.low) / 2)


def test_combine_seeds_t_interval_by_hand() -> None:
    # mean 2, SD 1, t(0.975, df 2) = 4.3027: half width 4.3027 / sqrt(3) = 2.4842
    interval = combine_seeds([1.0, 2.0, 3.0])
    assert interval.estimate == 2.0
    assert interval.low == pytest.approx(2.0 - 2.4842, abs=1e-4)
    assert interval.high == pytest.approx(2.0 + 2.4842, abs=1e-4)
    assert combine_seeds([4.0]) == Interval(4.0, 4.0, 4.0)


def test_several_seeds_widen_the_interval_by_their_spread() -> None:
    # Within each seed the errors are constant; only the seeds differ (2 vs 6): the estimate is their mean
    # and the interval runs from one seed to the other.
    interval = bootstrap_mean([np.full(5, 2.0), np.full(5, 6.0)], resamples=2000)
    assert interval.estimate == 4.0
    assert (interval.low, interval.high) == (2.0, 6.0)


def test_same_seed_same_interval_and_bad_input_is_refused() -> None:
    values = np.random.default_rng(0).normal(size=50)
    assert bootstrap_mean(values, seed=3) == bootstrap_mean(values, seed=3)
    with pytest.raises(ValueError, match="same images"):
        paired_difference(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="at least one value"):
        bootstrap_mean(np.array([]))
