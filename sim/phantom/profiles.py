"""Typed site profiles (population, scanner, acquisition, labelling) and the named presets.

A profile says *how* a hospital differs, never *which* images it has: every image is drawn from
(seed, index) by the generator. Ages are in months throughout; the label unit only matters when
labels are written. Each preset's docstring line in ``PRESETS`` is what ``docs/phantom.md`` shows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from core.errors import ConfigError

LABEL_UNITS = ("months", "years")
FILE_FORMATS = ("png", "dicom")


class ProfileError(ConfigError):
    """A profile value out of range, explained in one line."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ProfileError(message)


@dataclass(frozen=True)
class PopulationProfile:
    """Who is imaged: chronological age per sex, sex ratio and how far bone age runs ahead.

    Chronological age follows a Beta law scaled to ``age_range_months`` with the given mean and SD
    per sex; bone age = chronological age + ``maturation_offset_months`` + N(0, ``maturation_sd``),
    clipped to the same range.
    """

    age_range_months: tuple[float, float] = (1.0, 228.0)
    mean_months: tuple[float, float] = (117.9, 135.3)  # (female, male)
    sd_months: tuple[float, float] = (37.0, 41.3)  # (female, male)
    female_fraction: float = 0.458
    maturation_offset_months: float = 0.0
    maturation_sd_months: float = 8.0

    def __post_init__(self) -> None:
        lo, hi = self.age_range_months
        _check(0.0 <= lo < hi <= 300.0, f"age range {self.age_range_months} must satisfy 0 <= lo < hi <= 300")
        for mean, sd in zip(self.mean_months, self.sd_months):
            _check(lo < mean < hi, f"mean age {mean} outside the age range {self.age_range_months}")
            _check(0.0 < sd ** 2 < (mean - lo) * (hi - mean), f"age SD {sd} impossible for mean {mean} in range")
        _check(0.0 <= self.female_fraction <= 1.0, "female_fraction must be in [0, 1]")
        _check(self.maturation_sd_months >= 0.0, "maturation_sd_months must be >= 0")


@dataclass(frozen=True)
class ScannerProfile:
    """Detector and display chain: geometry, file format, grey-level mapping, noise and blur.

    Grey level = background + (1 - background) * (1 - exp(-exposure * attenuation)) ** gamma, where
    bone attenuates ``contrast`` times more than soft tissue; blur is a Gaussian of ``blur_px`` pixels
    at 256 px (scaled with ``image_size``); noise is Gaussian with SD ``noise`` at full grey.
    """

    image_size: int = 256
    file_format: str = "png"
    bit_depth: int = 8
    exposure: float = 3.0
    exposure_jitter: float = 0.12
    contrast: float = 4.5
    gamma: float = 1.0
    noise: float = 0.02
    blur_px: float = 0.7
    background: float = 0.06
    background_jitter: float = 0.05
    heel: float = 0.06
    inverted_fraction: float = 0.0

    def __post_init__(self) -> None:
        _check(32 <= self.image_size <= 2048, f"image_size {self.image_size} must be in [32, 2048]")
        _check(self.file_format in FILE_FORMATS, f"file_format must be one of {FILE_FORMATS}")
        allowed = (8, 16) if self.file_format == "png" else (12, 16)
        _check(self.bit_depth in allowed, f"{self.file_format} bit_depth must be one of {allowed}")
        _check(self.exposure > 0 and self.contrast > 0 and self.gamma > 0, "exposure, contrast, gamma must be > 0")
        _check(self.noise >= 0 and self.blur_px >= 0, "noise and blur_px must be >= 0")
        _check(0.0 <= self.background < 0.8, "background must be in [0, 0.8)")
        _check(0.0 <= self.inverted_fraction <= 1.0, "inverted_fraction must be in [0, 1]")


@dataclass(frozen=True)
class AcquisitionProfile:
    """How the hand is placed and what else lands on the detector.

    ``fill`` is the adult hand length as a fraction of the image side (children's hands come out
    smaller); rotation is uniform in +-``rotation_deg``; a ``rotation_90_fraction`` of images is
    additionally turned by +-90 degrees; translation is uniform in +-``translate`` of the side.
    """

    fill: float = 0.82
    scale_jitter: float = 0.05
    rotation_deg: float = 12.0
    rotation_90_fraction: float = 0.0
    mirror_fraction: float = 0.0
    translate: float = 0.04
    collimation_fraction: float = 0.3
    collimation_level: float = 0.55
    marker_fraction: float = 0.8

    def __post_init__(self) -> None:
        _check(0.3 <= self.fill <= 1.0, "fill must be in [0.3, 1]")
        _check(0.0 <= self.scale_jitter < 0.3, "scale_jitter must be in [0, 0.3)")
        _check(0.0 <= self.rotation_deg <= 180.0, "rotation_deg must be in [0, 180]")
        _check(0.0 <= self.translate <= 0.3, "translate must be in [0, 0.3]")
        for name in ("rotation_90_fraction", "mirror_fraction", "collimation_fraction", "marker_fraction",
                     "collimation_level"):
            _check(0.0 <= getattr(self, name) <= 1.0, f"{name} must be in [0, 1]")


@dataclass(frozen=True)
class LabellingProfile:
    """How a reader turns the true bone age into the label written to ``labels.csv``.

    label = true bone age + N(0, ``reader_sd_months``); then, for month sites, snapped to the nearest
    multiple of 12 with probability ``heap_12``, else of 6 with probability ``heap_6``, else rounded to
    a whole month; year sites round to whole years. Labels are clipped to the population age range.
    """

    unit: str = "months"
    reader_sd_months: float = 7.0
    heap_12: float = 0.35
    heap_6: float = 0.42

    def __post_init__(self) -> None:
        _check(self.unit in LABEL_UNITS, f"label unit must be one of {LABEL_UNITS}")
        _check(self.reader_sd_months >= 0.0, "reader_sd_months must be >= 0")
        _check(0.0 <= self.heap_12 and 0.0 <= self.heap_6 and self.heap_12 + self.heap_6 <= 1.0,
               "heap_12 and heap_6 must be >= 0 and sum to <= 1")


@dataclass(frozen=True)
class SiteProfile:
    """Everything that makes one simulated hospital: a name, a one-line description, four concerns."""

    name: str
    description: str
    population: PopulationProfile = field(default_factory=PopulationProfile)
    scanner: ScannerProfile = field(default_factory=ScannerProfile)
    acquisition: AcquisitionProfile = field(default_factory=AcquisitionProfile)
    labelling: LabellingProfile = field(default_factory=LabellingProfile)

    def with_image_size(self, image_size: int) -> SiteProfile:
        """The same site imaged at another resolution (blur scales with it)."""
        return replace(self, scanner=replace(self.scanner, image_size=image_size))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict of every field."""
        return asdict(self)


PRESETS: dict[str, SiteProfile] = {
    "rsna": SiteProfile(
        name="rsna",
        description="RSNA-2017-like source: large, GP bone age in months with heaping, mixed CR/DR PNGs, "
                    "L markers, some collimation, a few mirrored hands.",
        population=PopulationProfile(),
        scanner=ScannerProfile(exposure_jitter=0.2, noise=0.025, background_jitter=0.08, inverted_fraction=0.01),
        acquisition=AcquisitionProfile(rotation_deg=15.0, rotation_90_fraction=0.02, mirror_fraction=0.04,
                                       collimation_fraction=0.35, marker_fraction=0.9),
        labelling=LabellingProfile(unit="months", reader_sd_months=7.0, heap_12=0.35, heap_6=0.42),
    ),
    "tongji": SiteProfile(
        name="tongji",
        description="Tongji-like: Chinese children and young adults 0-22 y, 55 % girls, maturing ahead of "
                    "the GP atlas, whole-year labels, 16-bit DR DICOM with a flatter gamma.",
        population=PopulationProfile(age_range_months=(0.0, 264.0), mean_months=(118.0, 124.0),
                                     sd_months=(62.0, 64.0), female_fraction=0.55,
                                     maturation_offset_months=4.0, maturation_sd_months=10.0),
        scanner=ScannerProfile(file_format="dicom", bit_depth=16, exposure=3.4, exposure_jitter=0.06,
                               contrast=4.0, gamma=0.7, noise=0.008, blur_px=0.5, background=0.02,
                               background_jitter=0.01, heel=0.03),
        acquisition=AcquisitionProfile(fill=0.8, rotation_deg=6.0, translate=0.03, collimation_fraction=0.1,
                                       marker_fraction=0.5),
        labelling=LabellingProfile(unit="years", reader_sd_months=8.0, heap_12=0.0, heap_6=0.0),
    ),
    "eu_clinic": SiteProfile(
        name="eu_clinic",
        description="Western European paediatric endocrinology clinic: children read ~3 months behind the "
                    "atlas, 12-bit DICOM with 40 % MONOCHROME1, 10 % right hands, careful readers.",
        population=PopulationProfile(age_range_months=(24.0, 216.0), mean_months=(114.0, 128.0),
                                     sd_months=(36.0, 38.0), female_fraction=0.5,
                                     maturation_offset_months=-3.0, maturation_sd_months=9.0),
        scanner=ScannerProfile(file_format="dicom", bit_depth=12, exposure=2.8, contrast=5.0, gamma=1.1,
                               noise=0.012, blur_px=0.6, background=0.04, inverted_fraction=0.4),
        acquisition=AcquisitionProfile(fill=0.84, rotation_deg=8.0, mirror_fraction=0.1, collimation_fraction=0.5,
                                       marker_fraction=0.6),
        labelling=LabellingProfile(unit="months", reader_sd_months=5.0, heap_12=0.5, heap_6=0.3),
    ),
    "rural_cr": SiteProfile(
        name="rural_cr",
        description="District hospital with an old computed-radiography reader: noisy, blurred, low contrast, "
                    "bright background, hands rotated up to 45 degrees (some 90), markers on every film.",
        population=PopulationProfile(age_range_months=(12.0, 216.0), mean_months=(120.0, 132.0),
                                     sd_months=(44.0, 46.0), female_fraction=0.42,
                                     maturation_offset_months=-6.0, maturation_sd_months=12.0),
        scanner=ScannerProfile(exposure=2.6, exposure_jitter=0.25, contrast=3.2, gamma=1.35, noise=0.045,
                               blur_px=1.6, background=0.22, background_jitter=0.1, heel=0.12),
        acquisition=AcquisitionProfile(fill=0.78, scale_jitter=0.1, rotation_deg=45.0, rotation_90_fraction=0.15,
                                       mirror_fraction=0.05, translate=0.08, collimation_fraction=0.7,
                                       collimation_level=0.75, marker_fraction=1.0),
        labelling=LabellingProfile(unit="months", reader_sd_months=10.0, heap_12=0.6, heap_6=0.3),
    ),
    "peds_referral": SiteProfile(
        name="peds_referral",
        description="Children's hospital referral service: young-skewed (mostly under 8 y), 30 % right hands, "
                    "tight collimation, 16-bit PNG export, single senior reader.",
        population=PopulationProfile(age_range_months=(0.0, 168.0), mean_months=(52.0, 58.0),
                                     sd_months=(34.0, 36.0), female_fraction=0.48,
                                     maturation_offset_months=0.0, maturation_sd_months=9.0),
        scanner=ScannerProfile(bit_depth=16, exposure=3.0, contrast=5.0, gamma=0.9, noise=0.015, blur_px=0.8,
                               background=0.1, background_jitter=0.03),
        acquisition=AcquisitionProfile(fill=0.82, rotation_deg=20.0, mirror_fraction=0.3, collimation_fraction=0.9,
                                       collimation_level=0.35, marker_fraction=0.7),
        labelling=LabellingProfile(unit="months", reader_sd_months=6.0, heap_12=0.3, heap_6=0.3),
    ),
}


def get_preset(name: str) -> SiteProfile:
    """The preset called ``name``; ``ProfileError`` naming the known presets otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ProfileError(f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}") from None
