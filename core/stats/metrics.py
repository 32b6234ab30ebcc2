"""Bone-age metrics: MAD, RMSE, signed bias, class accuracy and error by age group."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

AGE_GROUPS_YEARS = ((0, 2), (2, 5), (5, 8), (8, 11), (11, 14), (14, 17), (17, 20))


@dataclass(frozen=True)
class Predictions:
    """Predicted and labelled bone ages of one evaluation, in months."""

    predicted_months: np.ndarray
    true_months: np.ndarray
    male: np.ndarray

    def __post_init__(self) -> None:
        if not (len(self.predicted_months) == len(self.true_months) == len(self.male)):
            raise ValueError("predictions, labels and sexes must have the same length")


def age_group_label(low: int, high: int) -> str:
    return f"{low}-{high}y"


def compute_metrics(
    predictions: Predictions, class_step_months: float = 3.0, label_unit: str = "months"
) -> dict[str, float | int | dict[str, float]]:
    """Aggregate metrics of one evaluation.

    `accuracy` is exact-class accuracy in the site's own label unit: for a site labelled in whole
    years the predicted age rounded to a whole year must equal the label; for a site labelled in
    months the predicted and true ages must fall in the same class of `class_step_months`.
    `accuracy_1y` counts predictions within 12 months of the label.
    """
    pred = np.asarray(predictions.predicted_months, dtype=np.float64)
    true = np.asarray(predictions.true_months, dtype=np.float64)
    n = int(pred.shape[0])
    if n == 0:
        return {"n": 0, "mad_months": float("nan"), "rmse_months": float("nan"), "accuracy": float("nan"),
                "accuracy_1y": float("nan"), "bias_months": float("nan"), "mad_by_age_group": {},
                "n_by_age_group": {}}
    error = pred - true
    step = 12.0 if label_unit == "years" else class_step_months
    same_class = np.round(pred / step) == np.round(true / step)
    groups: dict[str, float] = {}
    counts: dict[str, int] = {}
    for low, high in AGE_GROUPS_YEARS:
        inside = (true >= low * 12) & (true < high * 12)
        if high == AGE_GROUPS_YEARS[-1][1]:
            inside = true >= low * 12
        if inside.any():
            groups[age_group_label(low, high)] = float(np.mean(np.abs(error[inside])))
            counts[age_group_label(low, high)] = int(inside.sum())
    return {
        "n": n,
        "mad_months": float(np.mean(np.abs(error))),
        "rmse_months": float(np.sqrt(np.mean(error**2))),
        "accuracy": float(np.mean(same_class)),
        "accuracy_1y": float(np.mean(np.abs(error) <= 12.0)),
        "bias_months": float(np.mean(error)),
        "mad_by_age_group": groups,
        "n_by_age_group": counts,
    }
