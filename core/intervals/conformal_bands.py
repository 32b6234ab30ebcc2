"""Mondrian split-conformal intervals by predicted-age band: an interval that holds in each band, not only on average.

A model trained on bone age compresses towards the mean age: at the ends of the range its errors are larger
than in the middle, so one half-width for everyone (the marginal split-conformal interval) over-covers the
middle and under-covers the ends. Mondrian conformal prediction (Vovk et al., *Algorithmic Learning in a Random
World*, 2005, ch. 4; Vovk, "Conditional validity of inductive conformal predictors", ACML 2012) cuts the
calibration images into categories known at prediction time, here bands of the *predicted* age, and takes the
conformal quantile of each band's own scores. For a new image whose reading falls in a band, the interval then
holds with probability at least the coverage among images read in that band. It does not promise coverage for
each band of the *true* age: a 20-year-old read as 14 counts in the band of 14.

Band edges are quantiles of the calibration images' predicted ages, so every band has about as many images.
Each band also records the mean signed error (true - predicted) of its images: a large one in the lowest or
highest band is the model compressing its readings, which a reading there is flagged with.

This module is plain arithmetic on predicted and true ages; `core.intervals.conformal` fits and applies it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BandConfig:
    """How calibration images are cut into predicted-age bands.

    Attributes:
        n_bands: bands wanted (at least 3 are needed for bands to be used at all).
        min_per_band: fewest calibration images a band may have; with fewer images the number of bands drops,
            and below 3 bands only the single interval is stored.
    """

    n_bands: int = 5
    min_per_band: int = 30


MIN_BANDS = 3


@dataclass(frozen=True)
class AgeBand:
    """One predicted-age band of a Mondrian interval.

    Attributes:
        low_months, high_months: the band holds readings in [low, high) (the last band includes its top).
        n: calibration images read in the band.
        halfwidth_months: its conformal half-width with the sex given.
        halfwidth_months_sex_from_head: the same with the sex from the sex head (None without a sex head).
        bias_months: mean (true - predicted) bone age of its calibration images; positive: the model reads low.
    """

    low_months: float
    high_months: float
    n: int
    halfwidth_months: float
    halfwidth_months_sex_from_head: float | None
    bias_months: float

    @property
    def label(self) -> str:
        return f"{self.low_months:.0f}-{self.high_months:.0f} months"


def band_edges(predicted: np.ndarray, config: BandConfig) -> np.ndarray | None:
    """Inner edges (rounded to whole months) cutting `predicted` into equal-count bands; None when too few images."""
    n_bands = min(config.n_bands, len(predicted) // max(config.min_per_band, 1))
    while n_bands >= MIN_BANDS:
        edges = np.unique(np.round(np.quantile(predicted, np.arange(1, n_bands) / n_bands)))
        counts = np.bincount(np.searchsorted(edges, predicted, side="right"), minlength=len(edges) + 1)
        if len(edges) == n_bands - 1 and counts.min() >= config.min_per_band:
            return edges
        n_bands -= 1
    return None


def band_index(bands: tuple[AgeBand, ...], predicted: np.ndarray | float) -> np.ndarray:
    """The band of each reading (an index into `bands`)."""
    inner = np.array([band.low_months for band in bands[1:]])
    return np.searchsorted(inner, np.asarray(predicted, dtype=np.float64), side="right")


def fit_bands(predicted: np.ndarray, true: np.ndarray, head_predicted: np.ndarray | None, coverage: float,
              max_months: float, quantile: Callable[[np.ndarray, float], float],
              config: BandConfig = BandConfig()) -> tuple[AgeBand, ...]:
    """The bands of a Mondrian interval; () when the calibration images are too few for 3 bands.

    Args:
        predicted, true: bone ages (months) of the calibration images, the sex given.
        head_predicted: their readings with the sex from the sex head (None without a sex head).
        quantile: the finite-sample conformal quantile of scores at `coverage`.
    """
    edges = band_edges(predicted, config)
    if edges is None:
        return ()
    lows, highs = np.concatenate([[0.0], edges]), np.concatenate([edges, [max_months]])
    given = np.searchsorted(edges, predicted, side="right")
    head = None if head_predicted is None else np.searchsorted(edges, head_predicted, side="right")
    head_all = None if head_predicted is None else quantile(np.abs(true - head_predicted), coverage)
    bands = []
    for i, (low, high) in enumerate(zip(lows, highs)):
        inside = given == i
        errors = true[inside] - predicted[inside]
        from_head = None
        if head is not None:
            head_errors = np.abs(true[head == i] - head_predicted[head == i])
            # a band the head's readings rarely reach keeps the single head interval rather than a guess
            from_head = quantile(head_errors, coverage) if len(head_errors) >= config.min_per_band else head_all
        bands.append(AgeBand(float(low), float(high), int(inside.sum()), quantile(np.abs(errors), coverage),
                             from_head, float(errors.mean())))
    return tuple(bands)


def band_from_dict(values: dict) -> AgeBand:
    return AgeBand(**{k: v for k, v in values.items() if k in AgeBand.__dataclass_fields__})
