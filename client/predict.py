"""Bone age for new radiographs with a trained checkpoint: one output row per image, optional heat maps
and one HTML report per patient. Input files are only read; everything written goes under ``--out``.

An image that cannot be used (unreadable, refused by the model's quality gate, unknown sex with no sex
head) gets ``status="refused"`` and a one-line reason; the others go on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tqdm import tqdm

from client.acceptance import SiteAcceptance, acceptance_status
from client.site_interval import own_interval
from client.model_identity import model_identity
from client.reading import (SEX_FIELDS, UNSURE_SEX_FLAG, ReadingConfig, compression_flag, describe_preprocessing,
                            head_confidence, heat_flag, heat_outside_hand, pose_flag, sex_is_unsure,
                            unsure_sex_source, years_months)
from client.report_html import DISPLAY_SIZE, ImageSection, report_path, safe_name, write_reports
from client.worklist import PatientFacts, Resolved, WorkItem, resolve
from core.checkpoint import CheckpointError, file_sha256, load_checkpoint
from core.intervals.conformal import ConformalInterval, has_sex_head, interval_bounds, max_months
from core.data import ImageError, read_image
from core.data.images import declares_polarity, exif_flag
from core.data.dataset import fit_to_square
from core.data.patient import read_patient_tags
from core.predict.explain import heat_map, overlay, png_bytes
from core.predict.inference import model_input, predict_batch
from core.inputs import InputSettings
from core.preprocess import PreprocessConfig, Preprocessor
from core.preprocess.pipeline import hand_masker
from core.train.training import resolve_device

logger = logging.getLogger(__name__)

FIELDS = (
    "image", "patient_id", "status", "reason", "bone_age_months", "bone_age", "interval_low_months",
    "interval_high_months", "interval_coverage", "interval_band", "chronological_age_months", "chronological_age",
    "chronological_age_source", "ba_minus_ca_months", "ba_minus_ca_years", "sex", "sex_source", "sex_head_p_male",
    *SEX_FIELDS, "quality_flags", "quality_confidence", "preprocessing", "heatmap", "heatmap_outside_hand", "report",
    "model_sha256", "model_provenance", "model_acceptance", "interval_source",
)


@dataclass(frozen=True)
class PredictSettings:
    """One `predict` run: the model, the facts given on the command line and what to write."""

    model: Path
    facts: PatientFacts = PatientFacts()
    out: Path | None = None
    heatmap: bool = False
    report: bool = False
    heatmap_method: str = "gradcam"
    batch_size: int = 16
    device: str = "cpu"
    progress: bool = True
    reading: ReadingConfig = ReadingConfig()
    site: SiteAcceptance = SiteAcceptance(None)  # where the site's acceptance verdicts are, and whether it needs one
    interval: str = "model"  # or "site": the interval this site kept for a federated model (client.site_interval)


@dataclass
class _Pending:
    """An image read and resolved, waiting for its batch."""

    item: WorkItem
    facts: Resolved
    row: dict[str, Any]
    pixels: np.ndarray | None = None
    square: np.ndarray | None = None
    tensor: torch.Tensor | None = None
    flags: list[str] = field(default_factory=list)


class Predictor:
    """A loaded checkpoint turning work items into output rows (and reports)."""

    def __init__(self, settings: PredictSettings) -> None:
        self.settings = settings
        self.device = resolve_device(settings.device)
        checkpoint = load_checkpoint(settings.model)
        self.model = checkpoint.model.to(self.device).eval()
        self.metadata = checkpoint.metadata
        self.sha256 = file_sha256(settings.model)
        self.identity = model_identity(settings.model, self.metadata, self.sha256)
        self.identity["acceptance"] = acceptance_status(settings.site, self.sha256, settings.model)
        inputs = InputSettings.of(checkpoint)  # side, TTA and preprocessing, as the model was trained and scored
        self.image_size = inputs.image_size
        self.max_months = max_months(self.model)
        raw = self.metadata.get("conformal")
        self.conformal = ConformalInterval.from_dict(raw) if raw else None
        self.identity["interval"] = _interval_note(raw, self.metadata.get("conformal_federated") or {})
        if settings.interval == "site":
            self.conformal, self.identity["interval"] = own_interval(settings.site.state_dir, self.metadata)
        self.tta = inputs.tta
        # the model's own preprocessing and quality gate, one per view (an ensemble of region models reads several)
        self.views = [None if view is None else Preprocessor(view) for view in inputs.views]
        self.folder_views: dict[Path, list[Preprocessor | None]] = {}  # per input folder, its own noise limit (run)
        # the hand of the heat map's "outside the hand" share: the shown view's mask, the default one without settings
        self.hand_mask = self.views[0].hand_mask if self.views[0] else hand_masker(PreprocessConfig().resolved())
        self.sex_head = has_sex_head(self.model)
        if (settings.heatmap or settings.report) and not hasattr(self.model, "block4"):
            raise CheckpointError(f"{settings.model}: heat maps and reports need a TJ-Net checkpoint")
        if settings.heatmap_method == "attention" and not getattr(self.model.config, "use_cbam", False):
            raise CheckpointError(f"{settings.model} has no CBAM attention to show; use --heatmap-method gradcam")

    def run(self, items: list[WorkItem]) -> Iterator[dict[str, Any]]:
        """Output rows in input order; writes heat maps and reports under `settings.out` when asked."""
        self.folder_views = self._folder_views(items)
        sections: dict[str, list[ImageSection]] = {}
        bar = tqdm(total=len(items), unit="img", desc="predicting", disable=not self.settings.progress)
        for start in range(0, len(items), self.settings.batch_size):
            chunk = [self._prepare(item) for item in items[start:start + self.settings.batch_size]]
            self._predict(chunk)
            for pending in chunk:
                if self.settings.heatmap or self.settings.report:
                    section = self._explain(pending)
                    if section is not None and self.settings.report:
                        sections.setdefault(pending.facts.patient_id, []).append(section)
                bar.update(1)
                yield pending.row
        bar.close()
        if self.settings.report and sections:
            write_reports(self.settings.out / "reports", sections, self.identity)

    def _folder_views(self, items: list[WorkItem]) -> dict[Path, list[Preprocessor | None]]:
        """Per input folder, the model's preprocessing with the noise gate's limit measured on the folder's own films,
        as every path that reads a site's folder does (`PreprocessConfig.for_folder`: the same cached reference; a
        folder of too few readable films keeps the model's limit). Single files and worklist rows keep the limit
        the model recorded from its training folder."""
        views: dict[Path, list[Preprocessor | None]] = {}
        for folder in dict.fromkeys(item.folder for item in items if item.folder is not None):
            paths = [item.path for item in items if item.folder == folder]
            views[folder] = [view if view is None else _for_folder(view, paths) for view in self.views]
            if views[folder][0] is not self.views[0]:
                recorded = self.views[0].config.noise_limit
                logger.info("noise gate for the films of %s: noise SD above %.4f refused (measured on them; the model "
                            "recorded %s)", folder, views[folder][0].config.noise_limit,
                            f"{recorded:.4f}" if recorded else "none")
        return views

    def _prepare(self, item: WorkItem) -> _Pending:
        tags = read_patient_tags(item.path)
        facts = resolve(item, self.settings.facts, tags)
        row: dict[str, Any] = dict.fromkeys(FIELDS, "")
        row.update(image=str(item.path), patient_id=facts.patient_id, model_sha256=self.sha256,
                   model_provenance=self.identity["provenance"], model_acceptance=self.identity["acceptance"],
                   interval_source=self.identity["interval"], sex_source=facts.sex_source)
        if facts.age_months is not None:
            row.update(chronological_age_months=round(facts.age_months, 1),
                       chronological_age=years_months(facts.age_months), chronological_age_source=facts.age_source)
        pending = _Pending(item, facts, row, flags=list(facts.flags))
        if item.problem:
            return self._refuse(pending, item.problem)
        turned = exif_flag(item.path)
        pending.flags.extend([turned] if turned else [])
        try:
            pixels = read_image(item.path)
        except ImageError as exc:
            return self._refuse(pending, f"{exc.reason} ({exc.detail})" if exc.detail else exc.reason)
        except OSError as exc:
            return self._refuse(pending, f"cannot open: {exc.strerror or exc}")
        if facts.male is None and not self.sex_head:
            return self._refuse(pending, "sex unknown and this model has no sex head; give --sex or a sex column")
        views = []
        declared = declares_polarity(item.path)
        row["preprocessing"] = describe_preprocessing(None, None)
        for index, preprocessor in enumerate(self.folder_views.get(item.folder, self.views)):
            if preprocessor is None:
                views.append(pixels)
                continue
            result = preprocessor(pixels, declared)
            pending.flags.extend(flag for flag in result.flags if flag not in pending.flags)
            if index == 0:  # the view shown in the report
                row["preprocessing"] = describe_preprocessing(preprocessor.config, result)
                warning = pose_flag(result, self.settings.reading)
                pending.flags.extend([warning] if warning else [])
            confidence = round(float(result.confidence), 3)
            earlier = row["quality_confidence"]
            row["quality_confidence"] = confidence if earlier == "" else min(confidence, earlier)
            if result.refused is not None:
                return self._refuse(pending, f"refused by the quality gate: {result.refused}")
            if result.image.max() <= result.image.min():
                return self._refuse(pending, "refused by the quality gate: constant after preprocessing")
            views.append(result.image)
        inputs = [model_input(view, self.image_size) for view in views]
        pending.pixels, pending.square = views[0], inputs[0][0]
        pending.tensor = torch.cat([tensor for _, tensor in inputs])
        return pending

    def _refuse(self, pending: _Pending, reason: str) -> _Pending:
        pending.row.update(status="refused", reason=reason, quality_flags="; ".join(pending.flags))
        return pending

    def _predict(self, chunk: list[_Pending]) -> None:
        ready = [p for p in chunk if p.tensor is not None]
        if not ready:
            return
        images = torch.stack([p.tensor for p in ready])
        male = torch.tensor([float("nan") if p.facts.male is None else float(p.facts.male) for p in ready])
        batch = predict_batch(self.model, images, male, self.device, self.tta)
        unsure = [bool(batch.sex_from_head[i]) and sex_is_unsure(float(batch.p_male[i]), self.settings.reading)
                  for i in range(len(ready))]
        by_sex = {}
        if any(unsure):  # read those images as a girl's and as a boy's
            picked = torch.stack([p.tensor for p, u in zip(ready, unsure) if u])
            for sex in (0.0, 1.0):
                months = predict_batch(self.model, picked, torch.full((len(picked),), sex), self.device, self.tta)
                by_sex[sex] = iter(months.expected_months)
        for i, pending in enumerate(ready):
            months, p_male = float(batch.expected_months[i]), float(batch.p_male[i])
            if unsure[i]:
                self._fill_both_sexes(pending, float(next(by_sex[0.0])), float(next(by_sex[1.0])), p_male)
            else:
                self._fill(pending, months, bool(batch.male_used[i]), bool(batch.sex_from_head[i]), p_male)

    def _interval(self, pending: _Pending, months: float, from_head: bool,
                  reading: str = "") -> tuple[float, float] | None:
        """The interval of one reading (its band's when the interval has bands); flags a compressed end band."""
        if self.conformal is None:
            return None
        band = self.conformal.band_of(months)
        if band is not None:
            flag = compression_flag(self.conformal.bands, band, self.settings.reading)
            flag = f"{flag} ({reading})" if flag and reading else flag
            if flag is not None and flag not in pending.flags:
                pending.flags.append(flag)
        low, high = interval_bounds(months, self.conformal.halfwidth(from_head, months), self.max_months)
        return round(float(low), 1), round(float(high), 1)

    def _fill(self, pending: _Pending, months: float, male: bool, from_head: bool, p_male: float) -> None:
        row, flags = pending.row, pending.flags
        row.update(status="ok", bone_age_months=round(months, 1), bone_age=years_months(months),
                   sex="M" if male else "F")
        if np.isfinite(p_male):
            row["sex_head_p_male"] = round(p_male, 3)
        if from_head:
            row["sex_source"] = f"model's sex head (p = {head_confidence(p_male):.2f}); sex not given"
            flags.append("sex predicted by the model, not given")
        elif np.isfinite(p_male) and (p_male if not male else 1 - p_male) >= self.settings.reading.sex_head_disagrees:
            flags.append(f"the model's sex head disagrees with the given sex (p = {head_confidence(p_male):.2f})")
        interval = self._interval(pending, months, from_head)
        if interval is not None:
            band = self.conformal.band_of(months)
            row.update(interval_low_months=interval[0], interval_high_months=interval[1],
                       interval_coverage=self.conformal.coverage, interval_band="" if band is None else band.label)
        if pending.facts.age_months is not None:
            difference = months - pending.facts.age_months
            row.update(ba_minus_ca_months=round(difference, 1), ba_minus_ca_years=round(difference / 12.0, 2))
        self._finish(pending)

    def _fill_both_sexes(self, pending: _Pending, female: float, male: float, p_male: float) -> None:
        """The sex head is unsure: no single bone age, one per sex with the interval of a given sex."""
        row = pending.row
        row.update(status="ok", bone_age=f"F {years_months(female)}, M {years_months(male)}", sex="unknown",
                   sex_source=unsure_sex_source(p_male, self.settings.reading), sex_head_p_male=round(p_male, 3))
        for name, months in (("female", female), ("male", male)):
            row[f"bone_age_months_{name}"] = round(months, 1)
            interval = self._interval(pending, months, from_head=False, reading=f"the reading as {name}")
            if interval is not None:
                row[f"interval_low_months_{name}"], row[f"interval_high_months_{name}"] = interval
                row["interval_coverage"] = self.conformal.coverage
        pending.flags.append(UNSURE_SEX_FLAG)
        self._finish(pending)

    def _finish(self, pending: _Pending) -> None:
        if self.conformal is None:
            pending.flags.append("no calibrated interval in this checkpoint (python -m client calibrate)")
        pending.row["quality_flags"] = "; ".join(pending.flags)

    def _explain(self, pending: _Pending) -> ImageSection | None:
        if self.settings.report:
            pending.row["report"] = str(report_path(self.settings.out / "reports", pending.facts.patient_id))
        if pending.row["status"] != "ok":
            return ImageSection(pending.row, None, None) if self.settings.report else None
        heat = heat_map(self.model, pending.tensor, self._heat_sex(pending.row), self.settings.heatmap_method)
        display = fit_to_square(pending.pixels, DISPLAY_SIZE, DISPLAY_SIZE)
        heat_png = png_bytes(overlay(display, heat))
        outside = heat_outside_hand(heat, pending.square, self.hand_mask)
        if outside is not None:
            pending.row["heatmap_outside_hand"] = round(outside, 3)
            warning = heat_flag(outside, self.settings.reading)
            if warning is not None:
                pending.flags.append(warning)
                pending.row["quality_flags"] = "; ".join(pending.flags)
        if self.settings.heatmap:
            folder = self.settings.out / "heatmaps"
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{safe_name(pending.facts.patient_id)}_{safe_name(pending.item.path.stem)}.png"
            path.write_bytes(heat_png)
            pending.row["heatmap"] = str(path)
        seen = cv2.resize(pending.square, (DISPLAY_SIZE, DISPLAY_SIZE), interpolation=cv2.INTER_NEAREST)
        return ImageSection(pending.row, png_bytes(display), heat_png, png_bytes(seen))

    @staticmethod
    def _heat_sex(row: dict[str, Any]) -> float:
        """The sex the heat map is computed with: the one used, or the sex head's lean when it was unsure."""
        if row["sex"] == "unknown":
            return 1.0 if float(row["sex_head_p_male"]) >= 0.5 else 0.0
        return 1.0 if row["sex"] == "M" else 0.0


def _for_folder(view: Preprocessor, paths: list[Path]) -> Preprocessor:
    """The preprocessor with the noise limit measured on the films at ``paths`` (itself when nothing changes)."""
    config = view.config.for_folder(paths)
    return view if config == view.config else Preprocessor(config)


def _interval_note(conformal: dict[str, Any] | None, federated: dict[str, Any]) -> str:
    """What the checkpoint's own interval was fitted on, in words (and whether privacy noise set its width)."""
    if not conformal:
        return "none in this checkpoint"
    source = f" of {conformal['source']}" if conformal.get("source") else ""
    noise = ("; set by the sites' privacy noise, not by the model: wider than the model needs"
             if federated.get("noise_dominated") else "")
    return f"the model's: {conformal.get('n')} images, {conformal.get('split')} split{source}{noise}"
