"""Mondrian intervals by predicted-age band: each band covers what it promises where one interval fails the ends."""

from __future__ import annotations

import numpy as np

from core.intervals.conformal import ConformalInterval, conformal_quantile, coverage_by_band
from core.intervals.conformal_bands import BandConfig, band_edges, fit_bands


def compressing_model(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(predicted, true) of a made-up model that pulls its readings towards the mean age, as trained models do."""
    rng = np.random.default_rng(seed)
    true = rng.uniform(0.0, 228.0, n)
    predicted = np.clip(114.0 + 0.6 * (true - 114.0) + rng.normal(0.0, 8.0, n), 0.0, 228.0)
    return predicted, true


def banded_interval(predicted: np.ndarray, true: np.ndarray, config: BandConfig = BandConfig()) -> ConformalInterval:
    bands = fit_bands(predicted, true, predicted + 1.0, 0.9, 228.0, conformal_quantile, config)
    single = conformal_quantile(np.abs(true - predicted), 0.9)
    return ConformalInterval(0.9, single, single, len(true), "val", bands=bands)


def test_each_band_covers_ninety_percent_where_one_interval_fails_the_ends() -> None:
    interval = banded_interval(*compressing_model(2000, 0))
    assert len(interval.bands) == 5
    lows = [band.low_months for band in interval.bands]
    assert lows[0] == 0.0 and lows == sorted(lows) and interval.bands[-1].high_months == 228.0
    assert interval.bands[0].bias_months < -10 and interval.bands[-1].bias_months > 10  # compression, measured
    report = coverage_by_band(interval, *compressing_model(6000, 1), sex_from_head=False, max_months=228.0)
    assert len(report.bands) == 5 and 0.88 <= report.covered <= 0.93
    for band in report.bands:
        assert 0.86 <= band.used.covered <= 0.94, band
    single = [band.single.covered for band in report.bands]
    assert min(single[0], single[-1]) < 0.8 and single[2] > 0.97  # the ends under-covered, the middle over-covered
    middle, end = report.bands[2], report.bands[-1]
    assert end.used.mean_width_months > middle.used.mean_width_months


def test_few_calibration_images_give_fewer_bands_and_below_three_none() -> None:
    predicted, true = compressing_model(100, 2)
    assert len(banded_interval(predicted, true).bands) == 3  # 100 images, 30 per band at least
    assert band_edges(predicted[:80], BandConfig()) is None
    assert banded_interval(predicted[:80], true[:80]).bands == ()
    assert all(b.n >= 20 for b in banded_interval(predicted, true, BandConfig(5, 20)).bands)


def test_the_interval_uses_the_band_of_the_reading_and_survives_the_checkpoint() -> None:
    interval = banded_interval(*compressing_model(2000, 0))
    again = ConformalInterval.from_dict(interval.to_dict())
    assert again == interval
    for band in interval.bands:
        centre = (band.low_months + band.high_months) / 2
        assert again.halfwidth(False, centre) == band.halfwidth_months
        assert again.halfwidth(True, centre) == band.halfwidth_months_sex_from_head
    old = {k: v for k, v in interval.to_dict().items() if k != "bands"}  # a checkpoint written before bands
    assert ConformalInterval.from_dict(old).halfwidth(False, 200.0) == interval.halfwidth_months
