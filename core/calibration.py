"""Per-site linear calibration of a model's predictions: the cheapest adaptation a site can make.

The site fits `age = intercept + slope * predicted` by least squares on its own training split (months) and
applies it to every later prediction; no weight of the model changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LinearCalibration:
    intercept: float
    slope: float

    def apply(self, predicted_months: np.ndarray) -> np.ndarray:
        """Calibrated ages (months), clipped at 0."""
        return np.clip(self.intercept + self.slope * np.asarray(predicted_months, dtype=np.float64), 0.0, None)


def fit_linear_calibration(predicted_months: np.ndarray, true_months: np.ndarray) -> LinearCalibration:
    """Least-squares line from predicted to labelled ages; the identity when the fit is impossible.

    Args:
        predicted_months: the model's predictions on the site's training images.
        true_months: the site's labels for the same images.

    Returns:
        The fitted line (intercept in months, slope).
    """
    x = np.asarray(predicted_months, dtype=np.float64)
    y = np.asarray(true_months, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError("predictions and labels differ in length")
    if x.size < 2 or np.ptp(x) == 0.0:
        return LinearCalibration(float(np.mean(y - x)) if x.size else 0.0, 1.0)  # a shift is all one can fit
    slope, intercept = np.polyfit(x, y, 1)
    return LinearCalibration(float(intercept), float(slope))


@dataclass(frozen=True)
class SexCalibration:
    """One line for boys and one for girls: a site's reader convention on top of a shared model's anatomy."""

    boys: LinearCalibration
    girls: LinearCalibration

    def apply(self, predicted_months: np.ndarray, male: np.ndarray) -> np.ndarray:
        """Calibrated ages (months): each image through the line of its sex."""
        male = np.asarray(male, dtype=bool)
        return np.where(male, self.boys.apply(predicted_months), self.girls.apply(predicted_months))


def fit_sex_calibration(predicted_months: np.ndarray, true_months: np.ndarray, male: np.ndarray,
                        min_per_sex: int = 5) -> SexCalibration:
    """A line per sex fitted on the site's training split; a sex with fewer than `min_per_sex` images there takes the
    line fitted on both sexes (too few points to fit its own)."""
    x, y = np.asarray(predicted_months, dtype=np.float64), np.asarray(true_months, dtype=np.float64)
    male = np.asarray(male, dtype=bool)
    if not x.shape == y.shape == male.shape:
        raise ValueError("predictions, labels and sexes differ in length")
    both = fit_linear_calibration(x, y)
    lines = [fit_linear_calibration(x[m], y[m]) if int(m.sum()) >= min_per_sex else both for m in (male, ~male)]
    return SexCalibration(*lines)
