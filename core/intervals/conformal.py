"""Split-conformal prediction intervals for the predicted bone age.

The score of a labelled calibration image is the absolute error of the model's expected age,
``|y - f(x)|``. With ``n`` scores and a target coverage ``1 - a``, the half-width is the
``ceil((n + 1)(1 - a))``-th smallest score; for a new image exchangeable with the calibration images,
``[f(x) - q, f(x) + q]`` then holds its true bone age with probability at least ``1 - a`` (Vovk et al.,
*Algorithmic Learning in a Random World*, 2005; Lei et al., JASA 2018). The guarantee is marginal: over
images like the calibration set, not for each age group or for a site whose images differ.

Two half-widths are stored: one with the sex given to the model (the calibration label) and one with
the sex TJ-Net's own sex head predicts, used when a patient's sex is unknown. The interval of an image
whose sex came from the head is therefore as wide as that case measured, never silently the narrower one.

With enough calibration images (`core.intervals.conformal_bands.BandConfig`) the half-widths are also fitted per band of the
predicted age (Mondrian conformal, `core.intervals.conformal_bands`), and an image's interval is its band's: it then holds
in each band, where the single interval over-covers the middle of the range and under-covers its ends.

Checkpoint metadata["conformal"] = ``ConformalInterval.to_dict()``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.checkpoint import load_checkpoint, save_checkpoint
from core.intervals.conformal_bands import AgeBand, BandConfig, band_from_dict, band_index, fit_bands
from core.data import SiteDataConfig, load_site
from core.data.dataset import BoneAgeDataset, make_loader
from core.data.pool import concatenate
from core.errors import ConfigError
from core.predict.inference import predict_batch
from core.inputs import InputSettings
from core.train.training import resolve_device
from core.predict.tta import TTAConfig
from core.train.feature_scoring import ScoredSplit

logger = logging.getLogger(__name__)

METHOD = "split conformal, absolute error of the expected age"


class ConformalError(ConfigError):
    """Too few calibration images, or an interval that does not fit the model."""


@dataclass(frozen=True)
class ConformalInterval:
    """A calibrated symmetric interval around the predicted bone age (months).

    Attributes:
        coverage: the target probability that the interval holds the true bone age.
        halfwidth_months: half-width when the sex is given.
        halfwidth_months_sex_from_head: half-width when the sex comes from the model's sex head
            (None for a model without one).
        n: calibration images.
        split: where they came from ("val" of the training site, or a site's own split).
        source: the calibration folder, as given.
        method: how the half-width was computed.
        bands: the Mondrian half-widths per predicted-age band, () when the calibration set was too small;
            an image's interval is then the single one above.
    """

    coverage: float
    halfwidth_months: float
    halfwidth_months_sex_from_head: float | None
    n: int
    split: str
    source: str = ""
    method: str = METHOD
    bands: tuple[AgeBand, ...] = ()

    def to_dict(self) -> dict:
        values = asdict(self)
        values["bands"] = [asdict(band) for band in self.bands]
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "ConformalInterval":
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        known["bands"] = tuple(band_from_dict(band) for band in known.get("bands") or ())
        return cls(**known)

    def band_of(self, predicted_months: float) -> AgeBand | None:
        """The predicted-age band a reading falls in (None for an interval without bands)."""
        return self.bands[int(band_index(self.bands, predicted_months))] if self.bands else None

    def halfwidth(self, sex_from_head: bool, predicted_months: float | None = None) -> float:
        """The half-width for an image whose sex was given (False) or predicted (True); with its reading, the
        half-width of the reading's band when the interval has bands."""
        band = None if predicted_months is None else self.band_of(predicted_months)
        if sex_from_head:
            if self.halfwidth_months_sex_from_head is None:
                raise ConformalError("this interval was calibrated without a sex head; give the sex")
            return self.halfwidth_months_sex_from_head if band is None else band.halfwidth_months_sex_from_head
        return self.halfwidth_months if band is None else band.halfwidth_months

    def halfwidths(self, sex_from_head: bool, predicted_months: np.ndarray) -> np.ndarray:
        """The half-width of each reading (its band's, or the single one)."""
        return np.array([self.halfwidth(sex_from_head, float(p)) for p in predicted_months])


def minimum_calibration_size(coverage: float) -> int:
    """Smallest n for which the conformal quantile is finite: ceil((n + 1) * coverage) <= n."""
    return math.ceil(coverage / (1.0 - coverage) - 1e-9)


def conformal_quantile(scores: np.ndarray, coverage: float) -> float:
    """The ceil((n + 1) * coverage)-th smallest score (finite-sample split-conformal quantile)."""
    if not 0.0 < coverage < 1.0:
        raise ConformalError(f"coverage must be between 0 and 1, got {coverage}")
    n = len(scores)
    rank = math.ceil((n + 1) * coverage - 1e-9)
    if rank > n:
        raise ConformalError(f"a {coverage:.0%} interval needs at least {minimum_calibration_size(coverage)} "
                             f"calibration images, got {n}")
    return float(np.sort(np.asarray(scores, dtype=np.float64))[rank - 1])


def conformal_metadata(model: nn.Module, dataset: BoneAgeDataset, device: torch.device, source: str = "",
                       split: str = "val", tta: TTAConfig | None = None, scored: ScoredSplit | None = None) -> dict:
    """{"conformal": ...} for a checkpoint's metadata, calibrated on `dataset`; {} (and a warning) when it is
    too small. What pretraining and fine-tuning call right before saving."""
    try:
        return {"conformal": fit_conformal(model, dataset, device, split=split, source=source, tta=tta,
                                           scored=scored).to_dict()}
    except ConformalError as exc:
        logger.warning("no prediction interval stored: %s", exc)
        return {}


def predictions_of(model: nn.Module, dataset: BoneAgeDataset, device: torch.device,
                   sex_from_head: bool = False, batch_size: int = 64,
                   tta: TTAConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(predicted, true) bone ages in months, with the given sex or the sex the sex head predicts."""
    predicted, true = [np.zeros(0)], [np.zeros(0)]
    for batch in make_loader(dataset, batch_size, shuffle=False, seed=0):
        male = torch.full_like(batch["male"], float("nan")) if sex_from_head else batch["male"]
        predicted.append(predict_batch(model, batch["image"], male, device, tta).expected_months)
        true.append(batch["age"].numpy())
    return np.concatenate(predicted), np.concatenate(true)


def fit_conformal(model: nn.Module, dataset: BoneAgeDataset, device: torch.device, coverage: float = 0.9,
                  split: str = "val", source: str = "", tta: TTAConfig | None = None,
                  bands: BandConfig = BandConfig(), scored: ScoredSplit | None = None) -> ConformalInterval:
    """Calibrate the interval (single and per predicted-age band) on a labelled split the model was not trained on.
    `scored`: the model's predictions on `dataset` already made (`core.train.feature_scoring`), not made again.

    Raises:
        ConformalError: fewer images than the coverage needs.
    """
    n_needed = minimum_calibration_size(coverage)
    if len(dataset) < n_needed:
        raise ConformalError(f"a {coverage:.0%} interval needs at least {n_needed} labelled calibration images, "
                             f"the {split} split has {len(dataset)}")
    if scored is not None:
        predicted, true = scored.predicted_months, scored.true_months
    else:
        predicted, true = predictions_of(model, dataset, device, tta=tta)
    halfwidth = conformal_quantile(np.abs(true - predicted), coverage)
    from_head = head_predicted = None
    if has_sex_head(model):
        head_predicted = scored.head_predicted_months if scored is not None else None
        if head_predicted is None:
            head_predicted, _ = predictions_of(model, dataset, device, sex_from_head=True, tta=tta)
        from_head = conformal_quantile(np.abs(true - head_predicted), coverage)
    bands = replace(bands, min_per_band=max(bands.min_per_band, minimum_calibration_size(coverage)))
    by_band = fit_bands(predicted, true, head_predicted, coverage, max_months(model), conformal_quantile, bands)
    interval = ConformalInterval(coverage, halfwidth, from_head, len(dataset), split, source, bands=by_band)
    logger.info("conformal %.0f%% interval on %d %s images: +-%.1f months (sex given), %s (sex from the head)",
                coverage * 100, len(dataset), split, halfwidth,
                "n/a" if from_head is None else f"+-{from_head:.1f} months")
    for band in by_band:
        logger.info("  readings %s: +-%.1f months on %d images", band.label, band.halfwidth_months, band.n)
    return interval


def max_months(model: nn.Module) -> float:
    """The top of the model's age range (the centre of its last class; 228 months for a regression model)."""
    return float(getattr(model.config, "max_months", 228.0))


def has_sex_head(model: nn.Module) -> bool:
    block5 = getattr(model, "block5", None)
    return getattr(block5, "sex_head", None) is not None


def interval_bounds(predicted_months: np.ndarray | float, halfwidth: float,
                    max_months: float) -> tuple[np.ndarray, np.ndarray]:
    """[low, high] around the prediction, clipped to the model's age range (the truth lies inside it)."""
    predicted = np.asarray(predicted_months, dtype=np.float64)
    return np.clip(predicted - halfwidth, 0.0, max_months), np.clip(predicted + halfwidth, 0.0, max_months)


@dataclass(frozen=True)
class CoverageReport:
    """How an interval did on labelled images: the fraction covered (Wilson 95 % interval) and mean width."""

    n: int
    covered: float
    covered_low: float
    covered_high: float
    mean_width_months: float
    bands: tuple["BandCoverage", ...] = ()


@dataclass(frozen=True)
class BandCoverage:
    """Coverage among test images read in one predicted-age band: of the interval used (its band's half-width when
    the interval has bands) and, beside it, of the single interval."""

    band: str
    used: CoverageReport
    single: CoverageReport


def measure_coverage(predicted: np.ndarray, true: np.ndarray, halfwidth: float | np.ndarray,
                     max_months: float) -> CoverageReport:
    """Coverage and width of the interval (one half-width, or one per image) on images with known bone age."""
    low, high = interval_bounds(predicted, halfwidth, max_months)
    inside = (true >= low) & (true <= high)
    n = len(true)
    if n == 0:
        raise ConformalError("no labelled images to measure coverage on")
    p = float(inside.mean())
    z = 1.959964
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return CoverageReport(n, p, centre - spread, centre + spread, float(np.mean(high - low)))


def coverage_by_band(interval: ConformalInterval, predicted: np.ndarray, true: np.ndarray, sex_from_head: bool,
                     max_months: float) -> CoverageReport:
    """Coverage on labelled test images of the interval `predict` uses, overall and per predicted-age band (with
    the single interval's coverage in each band beside it). An interval without bands gets no breakdown."""
    used = interval.halfwidths(sex_from_head, predicted)
    single = interval.halfwidth(sex_from_head)
    overall = measure_coverage(predicted, true, used, max_months)
    per_band = []
    for i, band in enumerate(interval.bands):
        inside = band_index(interval.bands, predicted) == i
        if inside.any():
            per_band.append(BandCoverage(band.label, measure_coverage(predicted[inside], true[inside], used[inside],
                                                                      max_months),
                                         measure_coverage(predicted[inside], true[inside], single, max_months)))
    return replace(overall, bands=tuple(per_band))


def calibrate_checkpoint(model_path: Path, data: SiteDataConfig, out: Path, split: str = "val",
                         coverage: float = 0.9, device: str = "cpu",
                         bands: BandConfig = BandConfig()) -> tuple[ConformalInterval, dict[str, CoverageReport]]:
    """Re-calibrate a checkpoint's interval on a site's own labelled images and save it as `out`.

    Args:
        split: "val" or "test" of the site's deterministic split, or "all" (only for images the model was
            never trained on).

    Returns:
        The new interval and, when calibrated on "val", its coverage on the site's test split with the sex
        given ("sex given") and, for a model with a sex head, with the head's sex ("sex from head"), each
        overall and per predicted-age band.
    """
    if Path(out).resolve() == Path(model_path).resolve():
        raise ConformalError("--out must be a new file; the input checkpoint is never overwritten")
    checkpoint = load_checkpoint(model_path)
    torch_device = resolve_device(device)
    model = checkpoint.model.to(torch_device)
    wanted = ("train", "val", "test") if split == "all" else ("val", "test") if split == "val" else (split,)
    inputs = InputSettings.of(checkpoint)  # the images as the model reads them
    site = load_site(data, inputs.image_size, None, seed=0, splits=wanted, preprocess=inputs.preprocess)
    if split == "all":
        calibration = concatenate([site.train, site.val, site.test])  # not decoded again
    else:
        calibration = getattr(site, split)
    interval = fit_conformal(model, calibration, torch_device, coverage, split, str(data.root), inputs.tta, bands)
    reports: dict[str, CoverageReport] = {}
    if split == "val" and len(site.test) > 0:
        for name, from_head in (("sex given", False), ("sex from head", True)):
            if from_head and interval.halfwidth_months_sex_from_head is None:
                continue
            predicted, true = predictions_of(model, site.test, torch_device, sex_from_head=from_head, tta=inputs.tta)
            reports[name] = coverage_by_band(interval, predicted, true, from_head, max_months(model))
    metadata = dict(checkpoint.metadata, conformal=interval.to_dict())
    save_checkpoint(out, model.cpu(), metadata)
    return interval, reports
