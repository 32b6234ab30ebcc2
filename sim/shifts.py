"""Declared shifts of a hospital cut out of one real dataset: who is imaged, how, and how it is labelled.

`python -m sim partition` applies a `SiteShift` to real radiographs. The acquisition part reuses the
phantom's scanner chain (`sim.phantom.acquisition`: blur, detector noise, collimation, burned-in
markers) on the real image; grey-level changes follow the phantom's exposure/gamma/contrast model.
Each profile in `PARTITION_PROFILES` is a list of site shifts, cycled when more sites are asked for.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from core.errors import ConfigError
from sim.phantom.acquisition import add_noise, blur, burn_marker, collimate
from sim.phantom.profiles import AcquisitionProfile


@dataclass(frozen=True)
class PopulationShift:
    """Which source images a site takes: an age window (months), a share of girls, a size."""

    age_range_months: tuple[float, float] = (0.0, 240.0)
    female_fraction: float | None = None  # None: whatever the source has in the age window
    size: int = 300


@dataclass(frozen=True)
class AcquisitionShift:
    """What the site's scanner does to an image (all 0/1 defaults leave the image unchanged).

    Grey chain: g -> background + (1 - background) * clip(0.5 + contrast * (g ** gamma * gain - 0.5));
    `resolution` < 1 down-samples then up-samples (lost resolution); blur is in pixels at the image's size.
    """

    gain: float = 1.0
    gamma: float = 1.0
    contrast: float = 1.0
    background: float = 0.0
    noise: float = 0.0
    blur_px: float = 0.0
    resolution: float = 1.0
    rotation_deg: float = 0.0
    mirror_fraction: float = 0.0
    inverted_fraction: float = 0.0
    collimation_fraction: float = 0.0
    collimation_level: float = 0.55
    marker_fraction: float = 0.0


@dataclass(frozen=True)
class LabellingShift:
    """How the site's reader labels: unit (whole years for a Tongji-style site), offset and extra noise."""

    unit: str = "months"
    offset_months: float = 0.0
    reader_sd_months: float = 0.0


@dataclass(frozen=True)
class SiteShift:
    name: str
    description: str
    population: PopulationShift = field(default_factory=PopulationShift)
    acquisition: AcquisitionShift = field(default_factory=AcquisitionShift)
    labelling: LabellingShift = field(default_factory=LabellingShift)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


HOSPITALS = (
    SiteShift("young_referral", "children's referral centre: under 10 y, 30 % mirrored (right) hands, "
              "tight collimation, 16-bit-like smooth DR, careful single reader",
              PopulationShift((0.0, 120.0), None, 300),
              AcquisitionShift(gamma=0.85, contrast=1.1, noise=0.01, rotation_deg=10.0, mirror_fraction=0.3,
                               collimation_fraction=0.9, collimation_level=0.35, marker_fraction=0.5),
              LabellingShift("months", 0.0, 3.0)),
    SiteShift("adolescent_clinic", "adolescent endocrinology clinic: 10-19 y, 65 % girls, lower exposure "
              "with a flat gamma (greyer, washed out), readers 6 months ahead of the atlas",
              PopulationShift((120.0, 228.0), 0.65, 300),
              AcquisitionShift(gain=0.8, gamma=0.7, contrast=0.9, background=0.05, noise=0.015,
                               rotation_deg=8.0, collimation_fraction=0.3, marker_fraction=0.8),
              LabellingShift("months", 6.0, 4.0)),
    SiteShift("tongji_style", "Tongji-style hospital: all ages, whole-year labels, high-contrast DR, "
              "some inverted (MONOCHROME1) exports",
              PopulationShift((0.0, 240.0), 0.55, 300),
              AcquisitionShift(gamma=1.2, contrast=1.3, noise=0.008, rotation_deg=6.0, inverted_fraction=0.15,
                               collimation_fraction=0.1, marker_fraction=0.5),
              LabellingShift("years", 0.0, 0.0)),
    SiteShift("rural_cr", "district hospital, old CR reader: half resolution, blurred, noisy, low contrast, "
              "bright background, rotated up to 25 degrees, markers on every film, noisier reader",
              PopulationShift((12.0, 216.0), 0.42, 200),
              AcquisitionShift(gain=1.1, gamma=1.3, contrast=0.75, background=0.15, noise=0.04, blur_px=0.8,
                               resolution=0.5, rotation_deg=25.0, mirror_fraction=0.05, collimation_fraction=0.7,
                               collimation_level=0.75, marker_fraction=1.0),
              LabellingShift("months", -4.0, 8.0)),
)

IID = (SiteShift("iid", "a random share of the source, unchanged (no shift)"),)


def _acquisition_only(shift: SiteShift) -> SiteShift:
    """`shift`'s scanner alone: the whole source population (any age, girls as the source has them, same size)
    labelled like the source (months, no offset, no extra reader noise)."""
    return SiteShift(f"{shift.name}_scanner", f"{shift.name}'s acquisition only; source population and labels",
                     PopulationShift(size=shift.population.size), shift.acquisition, LabellingShift())


# Acquisition shifts only: every site has the same population and labelling, so a difference between sites is
# the scanner's alone (the `hospitals` profile adds who is imaged and how the reader labels).
ACQUISITION = tuple(_acquisition_only(shift) for shift in HOSPITALS)

PARTITION_PROFILES: dict[str, tuple[SiteShift, ...]] = {"hospitals": HOSPITALS, "acquisition": ACQUISITION,
                                                        "iid": IID}


def site_shifts(profile: str, n_sites: int, size: int | None) -> list[SiteShift]:
    """The shifts of `n_sites` sites under `profile` (cycled), each with `size` images if given."""
    if profile not in PARTITION_PROFILES:
        raise ConfigError(f"unknown partition profile {profile!r}; choose from {', '.join(PARTITION_PROFILES)}")
    base = PARTITION_PROFILES[profile]
    shifts = []
    for k in range(n_sites):
        shift = base[k % len(base)]
        population = shift.population if size is None else PopulationShift(
            shift.population.age_range_months, shift.population.female_fraction, size)
        shifts.append(SiteShift(shift.name, shift.description, population, shift.acquisition, shift.labelling))
    return shifts


def relabel(age_months: float, labelling: LabellingShift, rng: np.random.Generator) -> float:
    """The site's label (in its own unit) for a source label in months."""
    age = age_months + labelling.offset_months + (rng.normal(0.0, labelling.reader_sd_months)
                                                  if labelling.reader_sd_months > 0 else 0.0)
    age = float(np.clip(age, 1.0, 240.0))
    return float(round(age / 12.0)) if labelling.unit == "years" else float(round(age))


def _resample(image: np.ndarray, angle: float, mirrored: bool, resolution: float, fill: float) -> np.ndarray:
    picture = Image.fromarray(image.astype(np.float32), mode="F")
    if mirrored:
        picture = picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if angle:
        picture = picture.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=fill)
    if resolution < 1.0:
        h, w = image.shape
        small = (max(8, int(round(w * resolution))), max(8, int(round(h * resolution))))
        picture = picture.resize(small, Image.Resampling.BILINEAR).resize((w, h), Image.Resampling.BILINEAR)
    return np.asarray(picture, dtype=np.float32)


def acquire(image: np.ndarray, shift: AcquisitionShift, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Apply the site's acquisition to a real image in [0, 1]; returns the image and what was done."""
    image = np.clip(image.astype(np.float32), 0.0, 1.0)
    done: dict[str, Any] = {"mirrored": bool(rng.random() < shift.mirror_fraction)}
    angle = float(rng.uniform(-shift.rotation_deg, shift.rotation_deg)) if shift.rotation_deg else 0.0
    done["rotation_deg"] = round(angle, 2)
    border = float(np.median(np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])))
    image = _resample(image, angle, done["mirrored"], shift.resolution, border)
    grey = np.clip(image * shift.gain, 0.0, 1.0) ** shift.gamma
    grey = np.clip(0.5 + shift.contrast * (grey - 0.5), 0.0, 1.0)
    image = (shift.background + (1.0 - shift.background) * grey).astype(np.float32)
    if shift.blur_px > 0:
        image = blur(image, shift.blur_px)
    size = min(image.shape)
    hand = image > np.quantile(image, 0.6)
    done["collimated"] = bool(rng.random() < shift.collimation_fraction)
    if done["collimated"] and image.shape[0] == image.shape[1]:
        rows, cols = np.nonzero(hand)
        keypoints = np.array([[np.quantile(cols, 0.1), np.quantile(rows, 0.1)],
                              [np.quantile(cols, 0.9), np.quantile(rows, 0.9)]], dtype=np.float64)
        collimate(image, hand, keypoints, AcquisitionProfile(collimation_level=shift.collimation_level), rng)
    done["marker"] = bool(rng.random() < shift.marker_fraction) and size >= 32
    if done["marker"]:
        burn_marker(image, hand, "R" if done["mirrored"] else "L", rng)
    image = add_noise(image, shift.noise, rng)
    done["inverted"] = bool(rng.random() < shift.inverted_fraction)
    if done["inverted"]:
        image = 1.0 - image
    return image.astype(np.float32), done
