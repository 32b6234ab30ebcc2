"""Teacher targets for distillation (`python -m server distill-targets`): what an ensemble says of every image.

For each image of the chosen splits of a site folder: the mean over the members and over the views of the
test-time augmentation of their class probabilities, and its expected age (the mean of the members' expected ages
over those views: the plain mean ensemble). Written as one `core.train.distill.TeacherTargets` file that
`server pretrain --teacher FILE --distill-weight W` trains a student towards. The members must share the class grid
(head and bins), the input side and the preprocessing; a regression member has no class probabilities to give.

The teacher saw the training images in training, so its targets there are closer to the labels than its predictions
on new images: the report gives the teacher's MAD on every split to show how much.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from core.checkpoint import check_output_path, file_sha256, load_checkpoint
from core.data import DataError, SiteDataConfig, make_loader
from core.data.views import load_site_views
from core.errors import ConfigError
from core.inputs import InputSettings
from core.predict.tta import PRETRAIN_TTA, TTAConfig, transform
from core.stages.ensemble import member_views_of, shared_tta
from core.train.distill import TeacherTargets
from core.train.training import resolve_device

logger = logging.getLogger(__name__)

TEACHER_TTA = ("members", "default", "none")  # each member's recorded views, PRETRAIN_TTA's, or one plain pass


@dataclass(frozen=True)
class TeacherJob:
    """The members, the site folder, the output file, the splits to cover and the views to average."""

    models: tuple[Path, ...]
    data: SiteDataConfig
    out: Path
    splits: tuple[str, ...] = ("train", "val", "test")
    tta: str = "members"
    device: str = "auto"


def _grid(path: Path, model: nn.Module) -> tuple[int, float]:
    head = model.age_head
    if head.name == "regression":
        raise ConfigError(f"{path} has a regression head: it gives no class probabilities to distil")
    return int(head.num_classes), float(head.class_step_months)


def check_members(paths: tuple[Path, ...], loaded: list[Any], settings: list[InputSettings]) -> tuple[int, float]:
    """The members' shared class grid; a one-line `ConfigError` when heads, bins, input side or preprocessing differ."""
    grids = {path.name: _grid(path, c.model) for path, c in zip(paths, loaded)}
    if len(set(grids.values())) > 1:
        shown = ", ".join(f"{name} {k} classes of {step:g} months" for name, (k, step) in grids.items())
        raise ConfigError(f"the members' class heads differ ({shown}); a teacher averages one grid")
    sizes = {s.image_size for s in settings}
    views, _ = member_views_of(settings)
    if len(sizes) > 1 or len(views) > 1:
        raise ConfigError("the members read different inputs (image sizes "
                          f"{sorted(sizes)}, {len(views)} preprocessings); a teacher needs one")
    return next(iter(grids.values()))


def class_probabilities(model: nn.Module, dataset: Any, device: torch.device, tta: TTAConfig,
                        batch_size: int = 128) -> np.ndarray:
    """[N, K] `model`'s class probabilities on `dataset` in order, averaged over the views of `tta`."""
    model.to(device).eval()
    views = tta.views() if tta.enabled else [(0.0, 0.0, 1.0)]
    rows = []
    with torch.inference_mode():
        for batch in make_loader(dataset, batch_size, shuffle=False, seed=0):
            image, male = batch["image"].to(device), batch["male"].to(device)
            rows.append(sum(model(transform(image, *view), male).probabilities for view in views).cpu().numpy()
                        / len(views))
    return np.concatenate(rows) if rows else np.zeros((0, model.age_head.num_classes), dtype=np.float32)


def make_teacher_targets(job: TeacherJob) -> dict[str, Any]:
    """Write the teacher targets of `job` and return a report (members, views, teacher MAD per split).

    Raises:
        ConfigError: no member, `out` naming a member, members that differ (`check_members`) or record different
            test-time augmentation, an unknown split or `tta`; nothing is written.
        DataError: a split without usable images.
    """
    if not job.models:
        raise ConfigError("a teacher needs at least one --models checkpoint")
    if job.tta not in TEACHER_TTA:
        raise ConfigError(f"--tta must be one of {TEACHER_TTA}, got {job.tta!r}")
    unknown = [split for split in job.splits if split not in ("train", "val", "test")]
    if unknown or not job.splits:
        raise ConfigError(f"--splits takes train, val and test, got {list(job.splits)}")
    if any(Path(job.out).resolve() == Path(member).resolve() for member in job.models):
        raise ConfigError(f"--out {job.out} is one of the --models: the targets never overwrite a member")
    check_output_path(job.out)
    loaded = [load_checkpoint(path) for path in job.models]
    settings = [InputSettings.of(c) for c in loaded]
    num_classes, step = check_members(job.models, loaded, settings)
    tta = {"members": lambda: shared_tta(job.models, settings), "default": lambda: PRETRAIN_TTA,
           "none": TTAConfig}[job.tta]()
    device = resolve_device(job.device)
    site = load_site_views(job.data, settings[0].image_size, (settings[0].preprocess,), splits=job.splits)
    centres = np.arange(num_classes) * step
    ids, probabilities, report = [], [], {"members": [p.name for p in job.models], "tta": tta.to_dict()}
    for split in job.splits:
        dataset = getattr(site, split)
        if len(dataset) == 0:
            raise DataError(f"{job.data.root}: the {split} split has no usable images")
        mean = np.zeros((len(dataset), num_classes), dtype=np.float64)
        for path, checkpoint in zip(job.models, loaded):
            mean += class_probabilities(checkpoint.model, dataset, device, tta)
            logger.info("%s: %s split done (%d images, %d views)", path.name, split, len(dataset), len(tta.views()))
        mean /= len(loaded)
        true = np.array([r.age_months for r in dataset.records])
        report[split] = {"n_images": len(dataset), "teacher_mad_months": float(np.mean(np.abs(mean @ centres - true)))}
        ids += [r.image_id for r in dataset.records]
        probabilities.append(mean)
    probabilities_all = np.concatenate(probabilities)
    members = [{"file": str(Path(p).resolve()), "sha256": file_sha256(p)} for p in job.models]
    TeacherTargets(tuple(ids), probabilities_all.astype(np.float32), (probabilities_all @ centres).astype(np.float32),
                   step, {"members": members, "tta": tta.to_dict(), "data": str(job.data.root),
                          "splits": list(job.splits)}).save(job.out)
    logger.info("teacher targets of %d images from %d members written to %s", len(ids), len(loaded), job.out)
    return report
