"""`python -m client check`: can this site's data and machine take part in a federation?

Reads the manifest and decodes every image (files are opened read-only; the only file written is the optional
contact sheet), runs the preprocessing a model would see (quality flags and refusals per image), then times a few
real TJ-Net training steps on this machine to estimate the cost of a round.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from core.train.loss import make_loss
from core.checkpoint import load_checkpoint
from core.data import AugmentConfig, DataError, ImageError, SiteDataConfig, Skip, load_manifest, make_loader, read_image
from core.data.dataset import BoneAgeDataset, refusal_detail, refusal_reason
from core.data.manifest import AGE_OUT_OF_RANGE, Record, summarize
from core.data.split import split_records
from core.errors import ConfigError
from core.train.loss import JointLossConfig
from core.model.config import TJNetConfig
from core.model.freeze import freeze_blocks, parse_freeze_spec
from core.model.tjnet import TJNet
from core.inputs import InputSettings
from core.preprocess import PreprocessConfig, Preprocessor
from core.preprocess.review import QualityTally, contact_sheet
from core.preprocess.site import describe_check, orientation_for_site
from core.round_settings import RoundSettings
from core.train.training import TrainConfig, make_optimizer, resolve_device, train_epoch

logger = logging.getLogger("ossifl.client")

SHOWN_SKIPS = 20


ROUND = RoundSettings()  # a federated round's defaults, the ones the check times

@dataclass(frozen=True)
class TimingSettings:
    """The training a round runs: model size, frozen blocks, batch size, timed steps."""

    image_size: int = 128
    width: float = 0.5
    freeze: str = ROUND.freeze_spec
    batch_size: int = ROUND.batch_size
    local_epochs: int = ROUND.local_epochs
    steps: int = 3
    device: str = "auto"
    pretrained: Path | None = None
    preprocess: str = "default"
    contact_sheet: Path | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.local_epochs < 1 or self.steps < 1:
            raise ConfigError(f"--batch-size, --local-epochs and --steps must be at least 1, got {self.batch_size}, "
                              f"{self.local_epochs} and {self.steps}")


@dataclass
class CheckReport:
    """What `check` found; `summary` holds counts and the age and sex distribution."""

    data_path: str
    label_unit: str
    summary: dict[str, Any]
    skipped: list[dict[str, str]]
    split_sizes: dict[str, int]
    decode_seconds: float
    device: str = ""
    image_size: int = 0
    batch_size: int = 0
    steps_per_epoch: int = 0
    step_seconds: float = 0.0
    round_seconds: float = 0.0
    timing: dict[str, Any] = field(default_factory=dict)
    quality: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # why the site cannot take part; empty when usable

    @property
    def usable(self) -> bool:
        return not self.problems


def check_site(config: SiteDataConfig, settings: TimingSettings) -> CheckReport:
    """Validate a site folder and estimate the training time of one round on this machine.

    Raises:
        DataError: the site is not usable (whole-file problem, no usable image, empty training split).
    """
    manifest = load_manifest(config)
    preprocessor, enforce, site = _preprocessor(settings, [record.path for record in manifest.records])
    tally = QualityTally()
    start = time.perf_counter()
    usable, skipped = [], list(manifest.skipped)
    for record in manifest.records:
        try:
            image = read_image(record.path)
        except ImageError as exc:
            skipped.append(Skip(record.image_id, exc.reason, exc.detail))
            continue
        if preprocessor is not None:
            started = time.perf_counter()
            result = preprocessor(image)
            tally.add(record.image_id, image, result, time.perf_counter() - started)
            if result.refused is not None and enforce:
                skipped.append(Skip(record.image_id, refusal_reason(result.refused), refusal_detail(result.refused)))
                continue
        usable.append(record)
    decode_seconds = time.perf_counter() - start
    summary = summarize(usable, skipped, manifest.n_images_without_label)
    if not usable:
        reasons = ", ".join(f"{n} {reason}" for reason, n in summary["skipped_by_reason"].items())
        unit = [p for p in usability_problems(summary, {}, config.label_unit) if "impossible age" in p]
        raise DataError(f"{config.root}: no usable images ({summary['n_rows']} rows; skipped: {reasons or 'none'})"
                        + "".join(f"; {problem}" for problem in unit))
    splits = split_records(usable)
    if not splits["train"]:
        raise DataError(f"{config.root}: {len(usable)} usable image(s), none in the training split; add images")
    report = CheckReport(str(config.root), config.label_unit, summary,
                         [{"id": s.image_id, "reason": s.reason, "detail": s.detail} for s in skipped],
                         {name: len(records) for name, records in splits.items()}, decode_seconds)
    report.problems = usability_problems(summary, report.split_sizes, config.label_unit)
    if preprocessor is not None:
        report.quality = {**tally.summary(), "settings": preprocessor.describe(), "enforced": enforce,
                          "orientation_check": site}
        if settings.contact_sheet is not None and tally.examples:
            if _inside(settings.contact_sheet, config.root):  # e.g. `check` run from inside the site folder
                report.quality["contact_sheet"] = "not written: the path is inside the site folder, which OssiFL " \
                                                  "never writes into; give --contact-sheet elsewhere"
            else:
                report.quality["contact_sheet"] = str(contact_sheet(tally.examples, settings.contact_sheet))
    _time_training(report, splits["train"], settings)
    return report


def usability_problems(summary: dict[str, Any], split_sizes: dict[str, int], label_unit: str) -> list[str]:
    """Why a site cannot train, validate and test, in words a site can act on (empty when it can).

    A site needs images in all three splits. Most rows with an impossible age usually mean a wrong
    unit: it is named as the likely cause.
    """
    problems = []
    empty = [name for name in ("val", "test") if not split_sizes.get(name)]
    if empty:
        problems.append(f"no {' or '.join('validation' if e == 'val' else e for e in empty)} images among the "
                        f"{summary['n_usable']} usable: a site must train, validate and test (add images; "
                        f"about 30 or more give all three splits)")
    impossible, rows = summary["skipped_by_reason"].get(AGE_OUT_OF_RANGE, 0), summary["n_rows"]
    if impossible and 2 * impossible >= rows:
        cause = ("ages recorded in months but declared in years (--label-unit years multiplies them by 12)"
                 if label_unit == "years" else "ages in another unit (days, weeks) or a wrong --age-column")
        problems.append(f"{impossible} of {rows} rows have an impossible age (over 20 years); the likely cause: "
                        f"{cause}; the rows kept may be read with the same error")
    return problems


def _inside(path: Path, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(Path(folder).resolve())


def _preprocessor(settings: TimingSettings, paths: list[Path]) -> tuple[Preprocessor | None, bool, dict[str, Any]]:
    """(preprocessor, whether its refusals are skipped as training would skip them, the orientation self-check).

    The pretrained model's preprocessing, when it records one, is what the federation applies: its refusals are
    skipped, and its orientation model must pass the self-check on the site's images (it is never refitted here).
    Otherwise the --preprocess spec is advisory: flags and refusals are reported, the images stay usable, and an
    orientation model that fails the self-check is fitted on the site's images as ``client preprocess`` would.
    """
    if settings.pretrained is not None:
        recorded = InputSettings.of(load_checkpoint(settings.pretrained)).preprocess
        if recorded is not None:
            checked, site = orientation_for_site(recorded, paths, fit=False)
            return Preprocessor(checked), True, site
    config = PreprocessConfig.parse(settings.preprocess)
    if config is None:
        return None, False, {}
    checked, site = orientation_for_site(config, paths)
    return Preprocessor(checked), False, site


def _time_training(report: CheckReport, train_records: list[Record], settings: TimingSettings) -> None:
    """Time `settings.steps` training steps (after one warm-up step) on real, augmented images."""
    if settings.pretrained is not None:
        model = load_checkpoint(settings.pretrained).model
    else:
        model = TJNet(TJNetConfig(image_size=settings.image_size, width=settings.width))
    freeze_blocks(model, parse_freeze_spec(settings.freeze))
    device = resolve_device(settings.device)
    model.to(device)
    image_size = model.config.image_size
    batch = min(settings.batch_size, len(train_records))
    sample = [train_records[i % len(train_records)] for i in range(batch * (settings.steps + 1))]
    dataset = BoneAgeDataset(sample, image_size, AugmentConfig(), seed=0)
    loss_fn = make_loss(model, JointLossConfig())
    optimizer = make_optimizer(model, TrainConfig())
    warm_up = torch.utils.data.Subset(dataset, range(batch))
    timed = torch.utils.data.Subset(dataset, range(batch, len(dataset)))
    train_epoch(model, make_loader(warm_up, batch, shuffle=False, seed=0), loss_fn, optimizer, device)
    start = time.perf_counter()
    stats = train_epoch(model, make_loader(timed, batch, shuffle=False, seed=0), loss_fn, optimizer, device)
    step_seconds = (time.perf_counter() - start) / max(stats.steps, 1)
    n_train = report.split_sizes["train"]
    steps = n_train // settings.batch_size if n_train > settings.batch_size else 1
    report.device, report.image_size, report.batch_size = str(device), image_size, settings.batch_size
    report.steps_per_epoch, report.step_seconds = steps, step_seconds
    report.round_seconds = report.decode_seconds + settings.local_epochs * steps * step_seconds
    report.timing = {"width": model.config.width, "freeze": settings.freeze, "local_epochs": settings.local_epochs,
                     "timed_steps": stats.steps, "threads": torch.get_num_threads()}


def format_report(report: CheckReport) -> str:
    """A readable, multi-line report."""
    s = report.summary
    lines = [
        f"site folder     {report.data_path} (ages in {report.label_unit})",
        f"rows            {s['n_rows']}: {s['n_usable']} usable, {s['n_skipped']} skipped"
        + (f", {s['n_images_without_label']} image(s) without a label row" if s["n_images_without_label"] else ""),
        "splits          " + ", ".join(f"{k} {v}" for k, v in report.split_sizes.items()),
        f"sex             {s['n_male']} male, {s['n_female']} female",
        f"age (months)    min {s['age_min_months']:.1f}, mean {s['age_mean_months']:.1f}, "
        f"max {s['age_max_months']:.1f}",
        "age histogram   (years: images)",
    ]
    peak = max(s["age_histogram_years"].values())
    for year, count in s["age_histogram_years"].items():
        lines.append(f"  {year:>3}-{year + 1:<3} {count:>6}  " + "#" * max(1, round(30 * count / peak)))
    if report.skipped:
        lines.append("skipped         " + ", ".join(f"{n} {r}" for r, n in s["skipped_by_reason"].items()))
        for skip in report.skipped[:SHOWN_SKIPS]:
            lines.append(f"  {skip['id'] or '(empty id)'}: {skip['reason']}" + (f" ({skip['detail']})"
                                                                                  if skip["detail"] else ""))
        if len(report.skipped) > SHOWN_SKIPS:
            lines.append(f"  ... and {len(report.skipped) - SHOWN_SKIPS} more (use --json for all)")
    if report.quality:
        q = report.quality
        lines.append(f"preprocessing   {q['ms_per_image']:.1f} ms per image, mean orientation confidence "
                     f"{q['mean_confidence']:.2f}")
        if "orientation_check" in q:
            lines.append("  " + describe_check(q["orientation_check"]))
        lines.append("  flags         " + (", ".join(f"{k} {v}" for k, v in q["flags"].items()) or "none"))
        lines.append("  refused       " + (", ".join(f"{k} {v}" for k, v in q["refused"].items()) or "none")
                     + ("" if q["enforced"] else "  (advisory: the pretrained model records no preprocessing)"))
        if "contact_sheet" in q:
            lines.append(f"  before/after  {q['contact_sheet']}")
    t = report.timing
    lines += [
        f"reading images  {report.decode_seconds:.1f} s (repeated at every round)",
        f"training step   {report.step_seconds:.2f} s on {report.device} ({t['threads']} threads; TJ-Net "
        f"{report.image_size} px, width {t['width']}, blocks {t['freeze']} frozen, batch {report.batch_size})",
        f"estimate        {report.steps_per_epoch} steps x {t['local_epochs']} local epoch(s): "
        f"about {report.round_seconds:.0f} s per round (reading + training), plus evaluation and start-up",
        "result          " + ("usable" if report.usable else "NOT usable: " + "; ".join(report.problems)),
    ]
    return "\n".join(lines)


def report_json(report: CheckReport) -> str:
    """The report as one JSON object (histogram keys are whole years)."""
    return json.dumps({**asdict(report), "usable": report.usable}, default=str)
