"""Who is imaged (sex, chronological age, true bone age) and what the reader writes down."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.phantom.profiles import LabellingProfile, PopulationProfile


@dataclass(frozen=True)
class Subject:
    """One child: sex, chronological age and true (GP) bone age, both in months."""

    male: bool
    age_months: float
    bone_age_months: float


def _scaled_beta(rng: np.random.Generator, mean: float, sd: float, lo: float, hi: float) -> float:
    """A draw on [lo, hi] from the Beta law with this mean and SD."""
    mu, var = (mean - lo) / (hi - lo), (sd / (hi - lo)) ** 2
    k = mu * (1.0 - mu) / var - 1.0
    return lo + (hi - lo) * float(rng.beta(mu * k, (1.0 - mu) * k))


def sample_subject(population: PopulationProfile, rng: np.random.Generator) -> Subject:
    """Draw sex, chronological age and bone age (age + population offset + individual deviation)."""
    male = bool(rng.random() >= population.female_fraction)
    lo, hi = population.age_range_months
    age = _scaled_beta(rng, population.mean_months[male], population.sd_months[male], lo, hi)
    deviation = population.maturation_offset_months + rng.normal(0.0, population.maturation_sd_months)
    return Subject(male=male, age_months=age, bone_age_months=float(np.clip(age + deviation, lo, hi)))


def read_label(labelling: LabellingProfile, bone_age_months: float, age_range: tuple[float, float],
               rng: np.random.Generator) -> int:
    """The reader's label in the site's unit: noisy, heaped on atlas standards, clipped to the range."""
    months = bone_age_months + rng.normal(0.0, labelling.reader_sd_months)
    lo, hi = age_range
    if labelling.unit == "years":
        return int(np.clip(round(months / 12.0), np.ceil(lo / 12.0), np.floor(hi / 12.0)))
    draw = rng.random()
    step = 12.0 if draw < labelling.heap_12 else 6.0 if draw < labelling.heap_12 + labelling.heap_6 else 1.0
    return int(np.clip(step * round(months / step), np.ceil(lo), np.floor(hi)))
