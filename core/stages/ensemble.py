"""Linear ensembles of saved models, fitted on the validation split of a site folder.

    age = b[s] + sum_m w[s, m] * age_m        (s = the sex when fitted per sex, else one group)

The weights and intercepts are the least-squares fit of the members' validation predictions to the
labels (unconstrained, like the linear ensemble of the second seed document). The result is one
checkpoint (architecture "ensemble") that holds the members' weights and the fit, so `evaluate` and
every path that reads checkpoints take it like any model. Members trained on differently preprocessed images
(a region crop beside the whole hand) each read their own: the checkpoint records the distinct settings
(metadata "views") and which one each member reads; `evaluate` and `predict` feed every view
(`core.data.views`), and an image one view refuses is refused for the ensemble. Members that record the same
test-time augmentation (`server pretrain`'s default) are fitted on their augmented predictions and the ensemble
records it too; members that record different ones are refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.checkpoint import architecture_of, describe, file_sha256, load_checkpoint, save_checkpoint
from core.data import DataError, SiteDataConfig, make_loader
from core.data.views import StackedViews, load_site_views
from core.errors import ConfigError
from core.data.dataset import BoneAgeDataset
from core.inputs import InputSettings
from core.preprocess import PreprocessConfig
from core.stats.metrics import compute_metrics, Predictions
from core.model.combined import CombinedConfig, EnsembleModel, MemberSpec
from core.train.training import resolve_device
from core.predict.tta import TTAConfig, transform

logger = logging.getLogger(__name__)

LOO_TOLERANCE = 1.25  # a fit may err up to 25 % more than its best member on held-out images before it is refused


@dataclass(frozen=True)
class LinearFit:
    """weights [groups, members] and intercepts [groups]."""

    weights: np.ndarray
    intercepts: np.ndarray

    def apply(self, predictions: np.ndarray, groups: np.ndarray) -> np.ndarray:
        return np.sum(predictions * self.weights[groups], axis=1) + self.intercepts[groups]


def fit_linear(predictions: np.ndarray, target: np.ndarray, groups: np.ndarray, n_groups: int) -> LinearFit:
    """Least-squares weights and intercept per group of `predictions` [N, M] against `target` [N]."""
    predictions = np.asarray(predictions, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    n_members = predictions.shape[1]
    weights = np.zeros((n_groups, n_members))
    intercepts = np.zeros(n_groups)
    for group in range(n_groups):
        inside = groups == group
        if int(inside.sum()) <= n_members:
            raise ConfigError(f"group {group} has {int(inside.sum())} validation images, "
                             f"too few to fit {n_members} weights and an intercept")
        design = np.column_stack([predictions[inside], np.ones(int(inside.sum()))])
        solution, *_ = np.linalg.lstsq(design, target[inside], rcond=None)
        weights[group], intercepts[group] = solution[:-1], solution[-1]
    return LinearFit(weights, intercepts)


def member_predictions(model: EnsembleModel, dataset: BoneAgeDataset | StackedViews, device: torch.device,
                       batch_size: int = 64, tta: TTAConfig | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """([N, members] predicted ages, [N] labels, [N] sex) on `dataset`, in order; each member's age averaged over
    the views of `tta` when given (the ensemble is linear in its members, so its own TTA gives the same)."""
    model.to(device).eval()
    shifts = tta.views() if tta is not None and tta.enabled else [(0.0, 0.0, 1.0)]
    ages, labels, sexes = [], [], []
    with torch.inference_mode():
        for batch in make_loader(dataset, batch_size, shuffle=False, seed=0):
            male, images = batch["male"].to(device), batch["image"].to(device)
            ages.append(sum(model.member_predictions(transform(images, *view), male) for view in shifts).cpu().numpy()
                        / len(shifts))
            labels.append(batch["age"].numpy())
            sexes.append(batch["male"].numpy())
    if not ages:
        return np.zeros((0, len(model.members))), np.zeros(0), np.zeros(0)
    return np.concatenate(ages), np.concatenate(labels), np.concatenate(sexes)


def member_views_of(members: list[InputSettings]) -> tuple[tuple[PreprocessConfig | None, ...], tuple[int, ...]]:
    """(the distinct preprocessings of the members, in order of first use; the view index of each member).

    A member trained on a region crop reads that crop, a whole-hand member the whole image: each is fed
    exactly what it was trained on.
    """
    views: list[PreprocessConfig | None] = []
    indices = []
    for inputs in members:
        view = inputs.preprocess
        view = None if view is None else view.resolved()
        if view not in views:
            views.append(view)
        indices.append(views.index(view))
    return tuple(views), tuple(indices)


def shared_tta(paths: tuple[Path, ...], members: list[InputSettings]) -> TTAConfig:
    """The test-time augmentation every member records (the ensemble is fitted and scored with it); members that
    record different ones are refused in one line: each was scored its own way, and the fit needs one."""
    settings = {inputs.tta for inputs in members}
    if len(settings) > 1:
        named = ", ".join(f"{path.name} {inputs.tta.to_dict()}" for path, inputs in zip(paths, members))
        raise ConfigError(f"the members record different test-time augmentation ({named}); retrain or score them "
                          "alike (server pretrain --tta-shift/--tta-scale, or --no-tta)")
    return settings.pop()


@dataclass(frozen=True)
class EnsembleJob:
    """Members (checkpoint files), the site folder to fit on, where to write, and how to group."""

    models: tuple[Path, ...]
    data: SiteDataConfig
    out: Path
    per_sex: bool = False
    device: str = "auto"


def leave_one_out_mad(predictions: np.ndarray, target: np.ndarray, groups: np.ndarray, n_groups: int) -> float:
    """MAD of the linear fit on each validation image when fitted on all the others: what the fit is worth on new
    images (an in-sample fit on a handful of images always looks good)."""
    errors = []
    for index in range(len(target)):
        rest = np.arange(len(target)) != index
        fit = fit_linear(predictions[rest], target[rest], groups[rest], n_groups)
        errors.append(abs(float(fit.apply(predictions[index:index + 1], groups[index:index + 1])[0]) - target[index]))
    return float(np.mean(errors))


def check_fit_generalises(predictions: np.ndarray, target: np.ndarray, groups: np.ndarray, n_groups: int) -> None:
    """Refuse a fit that predicts held-out validation images clearly worse (by more than `LOO_TOLERANCE`) than
    the best member alone (leave-one-out on a few images is itself noisy, hence the margin).

    On too few images least squares finds absurd weights (+953 and -4.3, an intercept of -108,204 months on 4
    images) that fit those images and nothing else; leave-one-out shows it.
    """
    counts = [int((groups == group).sum()) for group in range(n_groups)]
    if min(counts) <= predictions.shape[1] + 1:
        raise ConfigError(f"{min(counts)} validation images in a group are too few to fit and check "
                          f"{predictions.shape[1]} weights and an intercept; add validation images")
    held_out = leave_one_out_mad(predictions, target, groups, n_groups)
    best = float(np.min(np.mean(np.abs(predictions - target[:, None]), axis=0)))
    if held_out > LOO_TOLERANCE * best:
        raise ConfigError(f"the ensemble fitted on {len(target)} validation images does not generalise: on held-out "
                          f"validation images it errs by {held_out:.2f} months, its best member by {best:.2f}; "
                          f"add validation images (or use the best member)")


def build_ensemble(job: EnsembleJob) -> dict[str, Any]:
    """Fit the ensemble on the val split, report members and ensemble on val and test, save it.

    Raises:
        ConfigError: fewer than two members, `out` naming a member, or a fit that does not generalise
            (`check_fit_generalises`); nothing is written.
    """
    if len(job.models) < 2:
        raise ConfigError("an ensemble needs at least two --models")
    if any(Path(job.out).resolve() == Path(member).resolve() for member in job.models):
        raise ConfigError(f"--out {job.out} is one of the --models: an ensemble never overwrites a member")
    loaded = [load_checkpoint(path) for path in job.models]
    members = [InputSettings.of(c) for c in loaded]
    tta = shared_tta(job.models, members)
    views, member_views = member_views_of(members)
    config = CombinedConfig(
        members=tuple(MemberSpec(architecture_of(c.model), c.model.config.to_dict()) for c in loaded),
        per_sex=job.per_sex, names=tuple(path.name for path in job.models),
        member_views=member_views if len(views) > 1 else ())
    model = EnsembleModel(config, [c.model for c in loaded])
    device = resolve_device(job.device)
    site = load_site_views(job.data, config.image_size, views, splits=("val", "test"))
    if len(site.val) == 0:
        raise DataError(f"{job.data.root}: the val split has no usable images to fit the ensemble on")
    val_ages, val_true, val_male = member_predictions(model, site.val, device, tta=tta)
    n_groups = 2 if job.per_sex else 1
    val_groups = (val_male > 0.5).astype(int) if job.per_sex else np.zeros(len(val_true), dtype=int)
    check_fit_generalises(val_ages, val_true, val_groups, n_groups)
    fit = fit_linear(val_ages, val_true, val_groups, n_groups)
    model.set_fit(torch.tensor(fit.weights, dtype=torch.float32), torch.tensor(fit.intercepts, dtype=torch.float32))
    report = {"members": list(config.names), "weights": fit.weights.tolist(), "intercepts": fit.intercepts.tolist(),
              "per_sex": job.per_sex}
    for split, dataset in (("val", site.val), ("test", site.test)):
        if split == "val":
            ages, true, male = val_ages, val_true, val_male
        else:
            ages, true, male = member_predictions(model, dataset, device, tta=tta)
        groups = (male > 0.5).astype(int) if job.per_sex else np.zeros(len(true), dtype=int)
        columns = {name: ages[:, i] for i, name in enumerate(config.names)}
        columns["ensemble"] = fit.apply(ages, groups)
        report[split] = {name: compute_metrics(Predictions(pred, true, male), config.class_step_months)["mad_months"]
                         for name, pred in columns.items()} if len(true) else {}
    settings = [None if view is None else view.to_dict() for view in views]
    metadata = describe(model, ensemble=report,
                        member_checkpoints=[{"file": str(p), "sha256": file_sha256(p)} for p in job.models],
                        data={"root": str(job.data.root), "label_unit": job.data.label_unit,
                              "summary": site.summary()},
                        tta=tta.to_dict(), **({"views": settings} if len(views) > 1 else {"preprocess": settings[0]}))
    save_checkpoint(job.out, model, metadata)
    logger.info("ensemble of %d members saved to %s; val MAD %.2f months", len(loaded), job.out,
                report["val"]["ensemble"])
    return report
