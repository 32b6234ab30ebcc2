"""Per-site linear calibration of a model's predictions: the cheapest adaptation a site can make.

The site fits `age = intercept + slope * predicted` by least squares on its own training split (months) and
applies it to every later prediction; no weight of the model changes.

A site's sex-specific line travels with its model: `attach_calibration` puts it on a model object, every prediction
made through `core.predict.tta.forward_tta` (predict, evaluate, the prediction interval, acceptance) then passes through it,
and a checkpoint whose metadata holds `site_calibration` (written by `client export`) is loaded with it attached.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from core.errors import UserError

METADATA_KEY = "site_calibration"  # checkpoint metadata: {"boys": {"intercept", "slope"}, "girls": {...}}
ATTRIBUTE = "site_calibration"  # the model object's attribute (not a weight: the state dict is unchanged)


class CalibrationError(UserError, ValueError):
    """A stored calibration that cannot be used (missing or non-finite numbers), in one line."""


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


def _line_of(raw: Any, name: str) -> LinearCalibration:
    try:
        line = LinearCalibration(float(raw["intercept"]), float(raw["slope"]))
    except (TypeError, KeyError, ValueError):
        raise CalibrationError(f"site calibration: the {name}' line needs numbers 'intercept' and 'slope', got "
                               f"{raw!r}") from None
    if not (math.isfinite(line.intercept) and math.isfinite(line.slope)):
        raise CalibrationError(f"site calibration: the {name}' line is not finite ({line})")
    return line


def calibration_to_dict(calibration: SexCalibration) -> dict[str, dict[str, float]]:
    """The JSON form kept in a site's state folder and a checkpoint's metadata."""
    return {name: {"intercept": line.intercept, "slope": line.slope}
            for name, line in (("boys", calibration.boys), ("girls", calibration.girls))}


def calibration_from_dict(raw: Any) -> SexCalibration:
    """The inverse of `calibration_to_dict`; `CalibrationError` for anything else."""
    if not isinstance(raw, dict):
        raise CalibrationError(f"site calibration: expected boys' and girls' lines, got {raw!r}")
    return SexCalibration(_line_of(raw.get("boys"), "boys"), _line_of(raw.get("girls"), "girls"))


def attach_calibration(model: nn.Module, calibration: SexCalibration | None) -> None:
    """Make every later prediction of `model` pass through `calibration` (None: remove it)."""
    setattr(model, ATTRIBUTE, calibration)


def calibration_of(model: nn.Module) -> SexCalibration | None:
    """The calibration attached to `model`, if any."""
    return getattr(model, ATTRIBUTE, None)


def calibrate_tensor(model: nn.Module, expected_months: torch.Tensor, male: torch.Tensor) -> torch.Tensor:
    """`expected_months` [B] through the line of each image's sex, clipped at 0; unchanged without a calibration."""
    calibration = calibration_of(model)
    if calibration is None:
        return expected_months
    boys, girls = calibration.boys, calibration.girls
    is_male = male.reshape(-1).to(expected_months.device) >= 0.5
    intercept = torch.where(is_male, boys.intercept, girls.intercept).to(expected_months.dtype)
    slope = torch.where(is_male, boys.slope, girls.slope).to(expected_months.dtype)
    return torch.clamp(intercept + slope * expected_months, min=0.0)
