"""How far a reading can be trusted: when the sex head is too unsure to stand in for the patient's sex, and
the other warnings a reading carries. The thresholds live in one typed config, `ReadingConfig`.

Unsure sex: TJ-Net's age classifier takes the sex as an input. When the sex is not given and the sex head's
probability of its more likely sex is below ``ReadingConfig.sex_sure``, feeding that sex would be a coin flip
presented as a fact; the reading gives the bone age under both sexes instead, each with the interval
calibrated for a given sex (if the patient is that sex, that interval holds), and asks for the sex.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from core.intervals.conformal_bands import AgeBand
from core.preprocess import PreprocessConfig
from core.preprocess.pipeline import PreprocessResult
from core.preprocess.segment import Segmentation

SEX_FIELDS = ("bone_age_months_female", "interval_low_months_female", "interval_high_months_female",
              "bone_age_months_male", "interval_low_months_male", "interval_high_months_male")


@dataclass(frozen=True)
class ReadingConfig:
    """Thresholds of the warnings on a reading (defaults defined here only).

    Attributes:
        sex_sure: with the sex not given, the sex head's probability of its more likely sex must reach this for
            its sex to be used; below it the bone age is given for both sexes.
        sex_head_disagrees: flag a given sex that the sex head contradicts with at least this probability.
        compression_months: flag a reading in the lowest or highest age band of the calibrated interval when, on
            the calibration images, the true ages there lay on average this far or further beyond the readings
            (the model compressing towards the mean age).
        heat_outside_hand: warn when at least this share of the heat map's mass lies outside the hand.
        pose_sure: warn when the pipeline changed the pose (turned, mirrored, inverted) on an orientation
            model's confidence below this (the pipeline itself refuses below its own `min_confidence`).
    """

    sex_sure: float = 0.8
    sex_head_disagrees: float = 0.9
    compression_months: float = 6.0
    heat_outside_hand: float = 0.5
    pose_sure: float = 0.8

    def __post_init__(self) -> None:
        if not 0.5 <= self.sex_sure <= 1.0:
            raise ValueError(f"the sex head's confidence threshold must lie in 0.5-1.0, got {self.sex_sure}")


def years_months(months: float) -> str:
    """12.5 -> "1 y 0 m" (rounded to the nearest month; a minus sign for negative values)."""
    total = int(round(abs(months)))
    return f"{'-' if months < 0 and total else ''}{total // 12} y {total % 12} m"


def head_confidence(p_male: float) -> float:
    """The sex head's probability of its more likely sex."""
    return max(p_male, 1.0 - p_male)


def sex_is_unsure(p_male: float, config: ReadingConfig) -> bool:
    """True when the sex head's answer is too close to a coin flip to be used as the patient's sex."""
    return head_confidence(p_male) < config.sex_sure


def unsure_sex_source(p_male: float, config: ReadingConfig) -> str:
    return (f"not given, and the model's sex head is unsure (p male = {p_male:.2f}; "
            f"{config.sex_sure:.2f} either way needed): bone age given for both sexes")


UNSURE_SEX_FLAG = "sex unknown: bone age given for both sexes; give the sex (--sex or a sex column) for one reading"



def compression_flag(bands: tuple[AgeBand, ...], band: AgeBand, config: ReadingConfig) -> str | None:
    """A warning for a reading in the lowest or highest band when the calibration images showed the model
    compressing there (true ages beyond its readings by `config.compression_months` on average)."""
    if band == bands[0] and band.bias_months <= -config.compression_months:
        return (f"at the low end of the model's range ({band.label}): on the calibration images read here the true "
                f"bone age was {-band.bias_months:.0f} months below the reading on average; the model compresses "
                "young readings towards the mean age")
    if band == bands[-1] and band.bias_months >= config.compression_months:
        return (f"at the high end of the model's range ({band.label}): on the calibration images read here the true "
                f"bone age was {band.bias_months:.0f} months above the reading on average; the model compresses "
                "old readings towards the mean age")
    return None


def pose_changes(result: PreprocessResult) -> list[str]:
    """What undoing the pose did to the image, in words."""
    pose, changes = result.pose, []
    if pose.inverted:
        changes.append("grey levels inverted (bone was dark)")
    if pose.quarter_turns:
        changes.append(f"turned {90 * pose.quarter_turns} degrees")
    if pose.angle_deg:
        changes.append(f"straightened by {pose.angle_deg:.0f} degrees")
    if pose.mirrored:
        changes.append("mirrored left-right (read as a right hand)")
    return changes


def describe_preprocessing(config: PreprocessConfig | None, result: PreprocessResult | None) -> str:
    """What the pipeline did to one image and how sure it was, e.g. "pose: mirrored left-right (orientation
    model's confidence 0.29); then edge bands cut, CLAHE"."""
    if config is None or result is None:
        return "none: the model reads the image as stored"
    parts = []
    if config.canonical:
        changes = pose_changes(result)
        parts.append(f"pose: {', '.join(changes) if changes else 'left as stored'} "
                     f"(orientation model's confidence {result.confidence:.2f})")
    steps = [name for name, on in (("edge bands cut", config.decollimate), ("background masked", config.segment),
                                   ("CLAHE", config.equalize), ("registered", config.register),
                                   (f"{config.region} crop", bool(config.region))) if on]
    return "; ".join(parts + ([f"then {', '.join(steps)}"] if steps else []))


def pose_flag(result: PreprocessResult, config: ReadingConfig) -> str | None:
    """A warning when the pipeline changed the pose without being sure of it."""
    changes = pose_changes(result)
    if not changes or result.confidence >= config.pose_sure:
        return None
    return (f"the pipeline changed the pose ({', '.join(changes)}) at confidence {result.confidence:.2f}: "
            "check the film is read the right way round")


def heat_outside_hand(heat: np.ndarray, square: np.ndarray,
                      hand_mask: Callable[[np.ndarray], Segmentation]) -> float | None:
    """Share of the heat map's mass outside the hand in the image the model read (uint8 square), the hand found
    by ``hand_mask`` (the mask the model's preprocessing names, `core.preprocess.pipeline.hand_masker`); None when
    no hand is found or the map is empty."""
    segmentation = hand_mask(square.astype(np.float32) / 255.0)
    side = square.shape[0]
    weights = cv2.resize(heat.astype(np.float32), (side, side), interpolation=cv2.INTER_LINEAR).clip(0.0, None)
    total = float(weights.sum())
    if not segmentation.found or total <= 0.0:
        return None
    return float(weights[~segmentation.mask].sum() / total)


def heat_flag(share: float | None, config: ReadingConfig) -> str | None:
    if share is None or share < config.heat_outside_hand:
        return None
    return (f"{share:.0%} of the heat map's mass lies outside the hand: the reading may rest on background, "
            "labels or the film's edges")
