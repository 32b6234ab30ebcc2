"""A site's acceptance checks of a model, on its own labelled cases, before the model reads patients' images.

Four checks, each with its figures and a pass/fail against a threshold the site sets (`AcceptancePolicy`):

- **accuracy**: MAD of the new model on the site's split; with a current model, the paired difference of absolute
  errors (new - current) over the images both scored, with a 95 % bootstrap interval (`core.stats.bootstrap`). The new model
  passes when the interval's upper end is below the margin: it is shown to be no worse than the current one by more
  than the margin (a non-inferiority test; a small site gets a wide interval and must set a wider margin or keep
  its model).
- **interval**: the share of the site's cases the model's own 90 % interval holds (Wilson 95 % interval); fails when
  the whole Wilson interval lies below the stated coverage, or when the model carries no interval.
- **quality gate**: the share of the split's images the model's preprocessing refuses; fails above the site's limit.
- **poses**: the first images of the split turned (90, 180, 270 degrees), mirrored and inverted, each copy through
  the model's own preprocessing. A copy the quality gate did not refuse and that is read more than the tolerance
  (12 months) from its upright image has moved; a pose fails when more than the allowed share (half) of its images
  moved, i.e. when the median copy of that pose is read a year off. A share, not a mean: on real films a
  canonicalising pipeline brings nearly every copy back to the upright image, but the few it leaves mirrored or
  cropped differently are read 20-70 months off and decided a mean over 8-24 images by chance of the images
  (docs/prediction.md has the figures). A model without canonicalising preprocessing fails: it reads most turned
  hands as another age.

Broken weights (a checkpoint that does not load, or holds NaN or infinite values) are a rejection with the reason,
never a traceback. Plain PyTorch: the site's audit log and command line live in `client/`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.checkpoint import CheckpointError, file_sha256, load_checkpoint
from core.intervals.conformal import ConformalInterval, coverage_by_band, max_months
from core.data import DataError, ImageError, SiteDataConfig, load_manifest, read_image
from core.data.dataset import make_loader
from core.data.manifest import Record
from core.data.split import split_records
from core.data.views import load_site_views
from core.predict.inference import model_input, predict_batch
from core.inputs import InputSettings
from core.preprocess import Preprocessor
from core.preprocess.stress import STRESS
from core.stats.bootstrap import bootstrap_mean, paired_difference
from core.train.training import predict, resolve_device

logger = logging.getLogger(__name__)

POSES = ("rotate90", "rotate180", "rotate270", "mirror", "invert")


@dataclass(frozen=True)
class AcceptancePolicy:
    """The site's thresholds (node-config keys in brackets, see `deploy/site.toml`).

    Attributes:
        margin_months: the new model's MAD may exceed the current model's by at most this much, with 95 %
            confidence (accept-margin-months).
        max_refused_share: largest share of the split the quality gate may refuse (accept-max-refused).
        pose_images: images of the split turned, mirrored and inverted (accept-pose-images).
        pose_tolerance_months: a copy the quality gate did not refuse and that is read more than this far from
            its upright image has moved (accept-pose-tolerance-months).
        max_pose_moved_share: largest share of the images whose copy moved, per pose (accept-max-pose-moved).
        split: the site's split the checks run on ("test": the images no federation trained on).
    """

    margin_months: float = 1.5
    max_refused_share: float = 0.10
    pose_images: int = 24
    pose_tolerance_months: float = 12.0
    max_pose_moved_share: float = 0.5
    split: str = "test"


@dataclass
class Check:
    name: str
    passed: bool
    reason: str = ""
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass
class Verdict:
    """The outcome: accepted or not, the first failed check's reason, and every check's figures."""

    accepted: bool
    reason: str
    model_sha256: str
    against_sha256: str | None
    checks: list[Check]

    def to_dict(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "reason": self.reason, "model_sha256": self.model_sha256,
                "against_sha256": self.against_sha256,
                "figures": {c.name: {"passed": c.passed, **c.figures} for c in self.checks}}


@dataclass
class _Scored:
    """A model's ages on the split: image id -> (predicted, true), images refused and images in the split."""

    ages: dict[str, tuple[float, float]]
    refused: int
    total: int


def _load(path: Path) -> tuple[Any, str]:
    """(checkpoint, "") or (None, why the weights are broken)."""
    try:
        checkpoint = load_checkpoint(path)
    except CheckpointError as exc:
        return None, f"broken weights: {exc}"
    bad = [key for key, value in checkpoint.model.state_dict().items()
           if value.is_floating_point() and not bool(torch.isfinite(value).all())]
    if bad:
        return None, f"broken weights: {len(bad)} array(s) hold NaN or infinite values, e.g. {bad[0]}"
    return checkpoint, ""


def _score(checkpoint: Any, data: SiteDataConfig, split: str, device: torch.device) -> _Scored:
    inputs = InputSettings.of(checkpoint)
    site = load_site_views(data, inputs.image_size, inputs.views, splits=(split,))
    dataset = getattr(site, split)
    refused = sum(1 for skip in dataset.skipped if skip.reason.startswith("refused"))
    total = len(dataset) + len(dataset.skipped)
    if len(dataset) == 0:
        return _Scored({}, refused, total)
    loader = make_loader(dataset, 64, shuffle=False, seed=0)
    result = predict(checkpoint.model.to(device), loader, device, tta=inputs.tta)
    ages = {record.image_id: (float(p), float(t))
            for record, p, t in zip(dataset.records, result.predicted_months, result.true_months)}
    return _Scored(ages, refused, total)


def _accuracy(new: _Scored, current: _Scored | None, policy: AcceptancePolicy) -> Check:
    errors = np.array([abs(p - t) for p, t in new.ages.values()])
    if errors.size == 0:
        return Check("accuracy", False, "no image of the split could be scored")
    if not np.isfinite(errors).all():
        return Check("accuracy", False, "the model predicts NaN or infinite ages")
    mad = bootstrap_mean(errors)
    figures: dict[str, Any] = {"n": int(errors.size), "mad_months": mad.estimate, "mad_low": mad.low,
                               "mad_high": mad.high, "margin_months": policy.margin_months}
    if current is None:
        return Check("accuracy", True, "", {**figures, "compared": False})
    common = [i for i in new.ages if i in current.ages]
    if len(common) < 2:
        return Check("accuracy", False, "fewer than 2 images scored by both models", figures)
    a = np.array([abs(new.ages[i][0] - new.ages[i][1]) for i in common])
    b = np.array([abs(current.ages[i][0] - current.ages[i][1]) for i in common])
    difference = paired_difference(a, b)
    figures.update(compared=True, paired_n=len(common), current_mad_months=float(b.mean()),
                   difference_months=difference.estimate, difference_low=difference.low,
                   difference_high=difference.high)
    if difference.high >= policy.margin_months:
        return Check("accuracy", False,
                     f"not shown to be within {policy.margin_months:g} months of the current model: MAD "
                     f"{a.mean():.1f} vs {b.mean():.1f} months, difference {difference} (95 % CI)", figures)
    return Check("accuracy", True, "", figures)


def _interval(checkpoint: Any, new: _Scored) -> Check:
    raw = checkpoint.metadata.get("conformal")
    if not raw:
        return Check("interval", False, "the model carries no prediction interval (python -m client calibrate)")
    interval = ConformalInterval.from_dict(raw)
    predicted = np.array([p for p, _ in new.ages.values()])
    true = np.array([t for _, t in new.ages.values()])
    report = coverage_by_band(interval, predicted, true, False, max_months(checkpoint.model))  # as predict reads
    figures = {"target": interval.coverage, "halfwidth_months": interval.halfwidth_months, **asdict(report)}
    if report.covered_high < interval.coverage:
        return Check("interval", False, f"its {interval.coverage:.0%} interval holds only {report.covered:.1%} of the "
                     f"site's {report.n} cases (95 % CI {report.covered_low:.1%}-{report.covered_high:.1%})", figures)
    return Check("interval", True, "", figures)


def _quality_gate(new: _Scored, policy: AcceptancePolicy) -> Check:
    share = new.refused / new.total if new.total else 0.0
    figures = {"refused": new.refused, "n": new.total, "refused_share": share, "limit": policy.max_refused_share}
    if share > policy.max_refused_share:
        return Check("quality_gate", False, f"its quality gate refuses {share:.1%} of the site's images "
                     f"(limit {policy.max_refused_share:.0%})", figures)
    return Check("quality_gate", True, "", figures)


def _read_through(checkpoint: Any, pixels: np.ndarray, preprocessors: list[Preprocessor | None]) -> torch.Tensor | None:
    """The model input of one image through the model's own preprocessing; None when its gate refuses it."""
    size = InputSettings.of(checkpoint).image_size
    tensors = []
    for preprocessor in preprocessors:
        image = pixels
        if preprocessor is not None:
            result = preprocessor(pixels)
            if result.refused is not None:
                return None
            image = result.image
        if image.max() <= image.min():
            return None
        tensors.append(model_input(image, size)[1])
    return torch.cat(tensors)


def pose_changes(checkpoint: Any, data_records: list[Record], images: int,
                 device: torch.device) -> tuple[int, dict[str, np.ndarray]]:
    """How far each turned, mirrored and inverted copy of the first `images` readable records is read from the
    upright image, each through the model's own preprocessing: (images read upright, pose -> |age change| in months
    per image, NaN where the model's quality gate refused the copy)."""
    inputs = InputSettings.of(checkpoint)
    preprocessors = [None if view is None else Preprocessor(view) for view in inputs.views]
    copies: dict[str, list[torch.Tensor | None]] = {name: [] for name in ("upright", *POSES)}
    sexes = []
    for index, record in enumerate(data_records[:images]):
        try:
            pixels = read_image(record.path)
        except ImageError:
            continue
        upright = _read_through(checkpoint, pixels, preprocessors)
        if upright is None:
            continue
        copies["upright"].append(upright)
        sexes.append(float(record.male))
        for name in POSES:
            turned = STRESS[name](pixels, np.random.default_rng([0, index]))
            copies[name].append(_read_through(checkpoint, turned, preprocessors))

    def ages(tensors: list[torch.Tensor | None]) -> np.ndarray:
        kept = [i for i, t in enumerate(tensors) if t is not None]
        out = np.full(len(tensors), np.nan)
        if kept:
            batch = predict_batch(checkpoint.model.to(device), torch.stack([tensors[i] for i in kept]),
                                  torch.tensor([sexes[i] for i in kept]), device, inputs.tta)
            out[kept] = batch.expected_months
        return out

    upright = ages(copies["upright"])
    return len(sexes), {name: np.abs(ages(copies[name]) - upright) for name in POSES}


def _poses(checkpoint: Any, data_records: list[Record], policy: AcceptancePolicy, device: torch.device) -> Check:
    images, changes = pose_changes(checkpoint, data_records, policy.pose_images, device)
    if not images:
        return Check("poses", False, "none of the images picked for the pose check could be read upright")
    figures: dict[str, Any] = {"images": images, "tolerance_months": policy.pose_tolerance_months,
                               "max_moved_share": policy.max_pose_moved_share}
    failed = []
    for name in POSES:
        change = changes[name]
        read = ~np.isnan(change)
        moved = int((change[read] > policy.pose_tolerance_months).sum())
        share = moved / images  # a refused copy is the gate doing its work: not moved
        figures[name] = {"refused": int((~read).sum()), "read": int(read.sum()), "moved": moved,
                         "moved_share": share,
                         "median_change_months": float(np.median(change[read])) if read.any() else 0.0}
        if share > policy.max_pose_moved_share:
            failed.append(f"{name} {moved} of {images}")
    if failed:
        return Check("poses", False, "turned, mirrored or inverted copies read as another age and not refused "
                     f"(copies read more than {policy.pose_tolerance_months:g} months off: {', '.join(failed)}; "
                     f"limit {policy.max_pose_moved_share:.0%} per pose)", figures)
    return Check("poses", True, "", figures)


def judge_model(model: Path, data: SiteDataConfig, against: Path | None = None,
                policy: AcceptancePolicy = AcceptancePolicy(), device: str = "cpu") -> Verdict:
    """Run every check of `model` on the site's `policy.split`; the first failed check gives the reason.

    Raises:
        CheckpointError: the current model (`against`) cannot be loaded (the site's own model: an error, not a
            verdict on the new one).
        DataError: the site's split has no usable image.
    """
    sha = file_sha256(model) if Path(model).is_file() else ""
    against_sha = file_sha256(against) if against is not None and Path(against).is_file() else None
    current_checkpoint = None
    if against is not None:
        current_checkpoint, broken = _load(against)
        if current_checkpoint is None:
            raise CheckpointError(f"the current model {against} cannot serve as the reference: {broken}")
    checkpoint, broken = _load(model)
    if checkpoint is None:
        return Verdict(False, broken, sha, against_sha, [Check("weights", False, broken)])
    torch_device = resolve_device(device)
    new = _score(checkpoint, data, policy.split, torch_device)
    if new.total == 0:
        raise DataError(f"{data.root}: the {policy.split} split has no images to check the model on")
    current = None if current_checkpoint is None else _score(current_checkpoint, data, policy.split, torch_device)
    checks = [Check("weights", True), _accuracy(new, current, policy),
              _interval(checkpoint, new) if new.ages else Check("interval", False, "no image could be scored"),
              _quality_gate(new, policy)]
    records = split_records(load_manifest(data).records)[policy.split]
    checks.append(_poses(checkpoint, records, policy, torch_device))
    failed = [c for c in checks if not c.passed]
    reason = "; ".join(c.reason for c in failed)
    logger.info("model %s on %s: %s", Path(model).name, data.root, "accepted" if not failed else f"rejected ({reason})")
    return Verdict(not failed, reason, sha, against_sha, checks)
