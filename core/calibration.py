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
