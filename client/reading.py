"""How far a reading can be trusted: when the sex head is too unsure to stand in for the patient's sex, and
the other warnings a reading carries. The thresholds live in one typed config, `ReadingConfig`.

Unsure sex: TJ-Net's age classifier takes the sex as an input. When the sex is not given and the sex head's
probability of its more likely sex is below ``ReadingConfig.sex_sure``, feeding that sex would be a coin flip
presented as a fact; the reading gives the bone age under both sexes instead, each with the interval
calibrated for a given sex (if the patient is that sex, that interval holds), and asks for the sex.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.conformal_bands import AgeBand

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
    """

    sex_sure: float = 0.8
    sex_head_disagrees: float = 0.9
    compression_months: float = 6.0
    heat_outside_hand: float = 0.5

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
