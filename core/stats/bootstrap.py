"""Intervals for comparing bone-age models: bootstrap over test images, paired differences, several seeds.

All intervals are 95 % percentile intervals unless `level` says otherwise. A bootstrap draws test images
with replacement (the same draw for both models of a paired difference, so the images' own difficulty
cancels). Several seeds or folds are combined by pooling: each replicate draws a seed (or fold) uniformly,
then images within it, so the interval widens with the spread between seeds as well as within them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import t as student_t

DEFAULT_RESAMPLES = 2000


@dataclass(frozen=True)
class Interval:
    """A point estimate and its interval."""

    estimate: float
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        """True when the whole interval lies on one side of zero (a significant difference)."""
        return self.low > 0.0 or self.high < 0.0

    def __str__(self) -> str:
        return f"{self.estimate:.2f} [{self.low:.2f}, {self.high:.2f}]"


def _as_groups(values: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    """One array per seed/fold; a single 1-D array is one group."""
    if isinstance(values, np.ndarray) and values.ndim == 1:
        groups = [values]
    else:
        groups = [np.asarray(v, dtype=np.float64).ravel() for v in values]
    groups = [np.asarray(g, dtype=np.float64) for g in groups]
    if not groups or any(g.size == 0 for g in groups):
        raise ValueError("an interval needs at least one value in every seed or fold")
    return groups


def _percentiles(replicates: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(replicates, [tail, 100.0 - tail])
    return float(low), float(high)


def bootstrap_mean(values: np.ndarray | Sequence[np.ndarray], resamples: int = DEFAULT_RESAMPLES,
                   level: float = 0.95, seed: int = 0) -> Interval:
    """Mean of `values` with a bootstrap interval.

    Args:
        values: per-image values (e.g. absolute errors), one array, or one array per seed/fold.
        resamples: bootstrap replicates.
        level: coverage of the interval.
        seed: seed of the resampling (the same call gives the same interval).

    Returns:
        The estimate (mean over seeds of each seed's mean) and its percentile interval.
    """
    groups = _as_groups(values)
    rng = np.random.default_rng(seed)
    estimate = float(np.mean([g.mean() for g in groups]))
    if resamples < 1:
        raise ValueError("resamples must be at least 1")
    which = rng.integers(len(groups), size=resamples)
    replicates = np.empty(resamples)
    for k, group in enumerate(groups):
        rows = np.flatnonzero(which == k)
        replicates[rows] = group[rng.integers(group.size, size=(rows.size, group.size))].mean(axis=1)
    low, high = _percentiles(replicates, level)
    return Interval(estimate, low, high)


def mad_interval(predicted: np.ndarray | Sequence[np.ndarray], true: np.ndarray | Sequence[np.ndarray],
                 **kwargs: float) -> Interval:
    """Mean absolute deviation with its bootstrap interval (one array per seed/fold, or one array)."""
    pred, label = _as_groups(predicted), _as_groups(true)
    if [p.size for p in pred] != [t.size for t in label]:
        raise ValueError("predictions and labels differ in length")
    return bootstrap_mean([np.abs(p - t) for p, t in zip(pred, label)], **kwargs)


def paired_difference(errors_a: np.ndarray | Sequence[np.ndarray], errors_b: np.ndarray | Sequence[np.ndarray],
                      **kwargs: float) -> Interval:
    """Mean of (a - b) over the same images, with a bootstrap interval (a, b: absolute errors per image).

    Negative means a is better (smaller error). Images must be in the same order in a and b.
    """
    a, b = _as_groups(errors_a), _as_groups(errors_b)
    if [x.size for x in a] != [y.size for y in b]:
        raise ValueError("a paired difference needs the same images for both models")
    return bootstrap_mean([x - y for x, y in zip(a, b)], **kwargs)


def combine_seeds(estimates: Sequence[float], level: float = 0.95) -> Interval:
    """Mean of per-seed (or per-fold) estimates with a t interval over them (one estimate: no width)."""
    values = np.asarray(estimates, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no estimates to combine")
    mean = float(values.mean())
    if values.size == 1:
        return Interval(mean, mean, mean)
    half = float(student_t.ppf(0.5 + level / 2.0, values.size - 1) * values.std(ddof=1) / np.sqrt(values.size))
    return Interval(mean, mean - half, mean + half)


def minimum_detectable_difference(errors_a: np.ndarray | Sequence[np.ndarray],
                                  errors_b: np.ndarray | Sequence[np.ndarray], **kwargs: float) -> float:
    """Half the width of the paired-difference interval: smaller true differences cannot be told from noise."""
    interval = paired_difference(errors_a, errors_b, **kwargs)
    return (interval.high - interval.low) / 2.0
