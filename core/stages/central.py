"""Central training ("the pretrained RSNA model") and checkpoint evaluation on a site folder."""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from core.checkpoint import build_model, check_output_path, describe, file_sha256, load_checkpoint, save_checkpoint
from core.intervals.conformal import conformal_metadata
from core.data import AugmentConfig, DataError, SiteDataConfig, load_manifest, load_site, make_loader
from core.data.dataset import BoneAgeDataset, DecodedSplit
from core.errors import ConfigError
from core.train.distill import TeacherTargets, WithTeacher
from core.train.evaluation import evaluate_model
from core.train.loss import JointLossConfig, make_loss
from core.model.heads import DEFAULT_HEAD_INIT, HEAD_INITS, init_age_head
from core.model.combined import CombinedConfig, MemberSpec, SexSpecificModel
from core.data.pool import concatenate
from core.data.views import load_site_views
from core.inputs import InputSettings
from core.preprocess import PreprocessConfig
from core.preprocess.site import orientation_for_site
from core.predict.tta import PRETRAIN_TTA, TTAConfig
from core.train.training import FitResult, TrainConfig, fit, resolve_device, seed_everything

logger = logging.getLogger(__name__)

PRETRAIN_EPOCHS = 40
"""How long `server pretrain` trains by default (cosine to 1/1000 over all of them): the best single-model recipe
measured at 96 px, width 0.5 on rsna100, 13.79 months (13.09 with the default TTA) over 3 seeds against 16.07 at 20
epochs, about 23 CPU minutes on one core (docs/benchmarks.md, "Training recipe"). `python -m sim` keeps its own
budget (`SimConfig.pretrain_epochs`)."""


@dataclass(frozen=True)
class PretrainJob:
    """Everything a central training run needs."""

    data: SiteDataConfig
    out: Path
    architecture: str = "tjnet"
    model_config: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = TrainConfig(epochs=PRETRAIN_EPOCHS)
    loss: JointLossConfig = JointLossConfig()
    augment: AugmentConfig | None = AugmentConfig()
    threads: int | None = None
    preprocess: PreprocessConfig | None = None
    sex_specific: bool = False
    tta: TTAConfig = PRETRAIN_TTA  # recorded in the checkpoint; TTAConfig() for none
    head_init: str = DEFAULT_HEAD_INIT  # `core.model.heads.init_age_head`: the output starts at the ages' prior
    init: Path | None = None  # start from this checkpoint's weights (same architecture and model settings)
    teacher: Path | None = None  # distil these targets (`core.train.distill`; needs loss.distill_weight > 0)


def pretrain(job: PretrainJob) -> dict[str, Any]:
    """Train a model centrally on one site folder and save the best checkpoint (by val MAD).

    With `job.sex_specific`, one model is trained on the girls and one on the boys of the site (each
    keeping its own best epoch) and both are saved as one checkpoint that routes each image by its sex.

    With `job.train.ema_decay` > 0, `job.out` holds the moving average of the weights at the end of training
    (`core.train.ema`) and `raw_weights_path(job.out)` the best epoch's own weights, so that the two can be scored on
    the same images; the metadata of both records both val MADs ("ema").

    With `job.init`, training starts from that checkpoint's weights, head included (`head_init` is not applied), for
    example to retrain an existing source model briefly with preprocessing; the metadata records it ("init").

    With `job.teacher`, the joint loss also pulls the model towards the teacher's class probabilities of each
    training image (`core.train.distill`, weight `job.loss.distill_weight`); the metadata records the file ("teacher").
    """
    check_output_path(job.out)  # before hours of training, not after
    if job.train.ema_decay > 0 and job.sex_specific:
        raise ConfigError("--ema-decay is not supported with --sex-specific")
    if job.init is not None and job.sex_specific:
        raise ConfigError("--init is not supported with --sex-specific")
    if job.head_init not in HEAD_INITS:
        raise ConfigError(f"head init must be one of {HEAD_INITS}, got {job.head_init!r}")
    if job.threads:
        torch.set_num_threads(job.threads)
    seed_everything(job.train.seed)
    device = resolve_device(job.train.device)
    model = build_model(job.architecture, job.model_config).to(device)
    teacher = teacher_for(job, model)
    init = None if job.init is None else start_from(model, job.architecture, job.init)
    preprocess = None
    if job.preprocess is not None:  # the orientation model checked (or fitted) on this folder's own images
        preprocess, _ = orientation_for_site(job.preprocess, [r.path for r in load_manifest(job.data).records])
    site = load_site(job.data, model.config.image_size, job.augment, job.train.seed, progress=job.train.progress,
                     preprocess=preprocess)
    if len(site.train) == 0 or len(site.val) == 0:
        raise DataError(f"{job.data.root}: no usable training or validation images")
    started = time.perf_counter()
    if job.sex_specific:
        members, extra = [], {}
        for male, name in ((False, "female"), (True, "male")):
            seed_everything(job.train.seed)
            member = build_model(job.architecture, job.model_config).to(device)
            result, loss_fn = _fit(job, member, sex_subset(site.train, male, job.augment),
                                   sex_subset(site.val, male, None), device)
            members.append(member)
            extra[name] = {"best_epoch": result.best_epoch, "best_val_mad_months": result.best_val_mad,
                           "history": result.history}
        spec = MemberSpec(job.architecture, members[0].config.to_dict())
        model = SexSpecificModel(CombinedConfig(members=(spec, spec), names=("female", "male")), *members).to(device)
        val_mad = evaluate_model(model, site.val, device, job.data.label_unit)["mad_months"]
        best = {"best_epoch": None, "best_val_mad_months": val_mad, "history": [], "sex_specific": extra}
    else:
        result, loss_fn = _fit(job, model, site.train, site.val, device, teacher)
        best = {"best_epoch": result.best_epoch, "best_val_mad_months": result.best_val_mad, "history": result.history}
    if init is not None:
        best["init"] = init
    if teacher is not None:
        best["teacher"] = {"path": str(Path(job.teacher).resolve()), "sha256": file_sha256(job.teacher),
                           "members": teacher.metadata.get("members")}
    seconds = time.perf_counter() - started
    save = {"seconds": seconds, "loss_fn": loss_fn, "site": site, "device": device, "preprocess": preprocess}
    if job.train.ema_decay > 0:
        raw = copy.deepcopy(model)
        model.load_state_dict(result.ema_state)
        ema_mad = evaluate_model(model, site.val, device, job.data.label_unit)["mad_months"]
        best["ema"] = {"decay": job.train.ema_decay, "val_mad_months_ema": ema_mad,
                       "val_mad_months_raw": result.best_val_mad, "raw_weights": str(raw_weights_path(job.out))}
        logger.info("val MAD %.2f months with the moving average of the weights (decay %g), %.2f with the best "
                    "epoch's weights (epoch %d)", ema_mad, job.train.ema_decay, result.best_val_mad, result.best_epoch)
        _save(job, raw, best | {"weights": "raw"}, raw_weights_path(job.out), **save)
        best |= {"weights": "ema", "best_val_mad_months": ema_mad}
    metadata = _save(job, model, best, job.out, **save)
    logger.info("best val MAD %.2f months; saved %s (%.0f s, %.1f s/epoch)", best["best_val_mad_months"], job.out,
                seconds, seconds / max(job.train.epochs * (2 if job.sex_specific else 1), 1))
    return metadata


def start_from(model: nn.Module, architecture: str, path: Path) -> dict[str, Any]:
    """Load the weights of the checkpoint at `path` into `model`; returns what the metadata records of it.

    Raises:
        ConfigError: the checkpoint holds another architecture or other model settings (the keys that differ).
        CheckpointError: it cannot be read.
    """
    source = load_checkpoint(path)
    theirs, ours = source.metadata.get("architecture"), architecture
    if theirs != ours:
        raise ConfigError(f"--init {path} holds a {theirs} model, not a {ours} one")
    wanted, held = model.config.to_dict(), source.model.config.to_dict()
    differ = [f"{key} {held.get(key)!r} (asked {wanted.get(key)!r})" for key in sorted(set(wanted) | set(held))
              if wanted.get(key) != held.get(key)]
    if differ:
        raise ConfigError(f"--init {path} has other model settings: {', '.join(differ)}; give the same ones")
    model.load_state_dict(source.model.state_dict())
    logger.info("starting from the weights of %s (val MAD %s months)", path,
                source.metadata.get("best_val_mad_months", "unknown"))
    return {"path": str(Path(path).resolve()), "sha256": file_sha256(path),
            "best_val_mad_months": source.metadata.get("best_val_mad_months"),
            "preprocess": source.metadata.get("preprocess")}


def teacher_for(job: PretrainJob, model: nn.Module) -> TeacherTargets | None:
    """The job's teacher targets, read and checked against `model`'s class grid (None without a teacher).

    Raises:
        ConfigError: a teacher without a distillation weight or the reverse, with --sex-specific or a regression
            head, on another class grid, or a file that is not teacher targets.
    """
    weight = job.loss.distill_weight
    if (job.teacher is None) != (weight == 0):
        raise ConfigError("--teacher and --distill-weight go together: give both (a weight > 0) or neither")
    if job.teacher is None:
        return None
    if job.sex_specific:
        raise ConfigError("--teacher is not supported with --sex-specific")
    head = model.age_head
    if head.name == "regression":
        raise ConfigError("--teacher needs a class head (the teacher gives class probabilities), not regression")
    targets = TeacherTargets.load(job.teacher)
    targets.check_grid(head.num_classes, head.class_step_months)
    return targets


def raw_weights_path(out: Path) -> Path:
    """Where a run with an EMA of the weights saves its best epoch's own weights: model.pt -> model.raw.pt."""
    return out.with_name(f"{out.stem}.raw{out.suffix}")


def _save(job: PretrainJob, model: nn.Module, best: dict[str, Any], out: Path, seconds: float, loss_fn: nn.Module,
          site: Any, device: torch.device, preprocess: PreprocessConfig | None) -> dict[str, Any]:
    """Describe `model` (its recipe, data, best epoch, conformal interval on val) and save it to `out`."""
    metadata = describe(
        model,
        seed=job.train.seed,
        train_config=asdict(job.train),
        loss_config=asdict(job.loss),
        loss_state=loss_fn.schedule.state_dict() if hasattr(loss_fn, "schedule") else {},
        data={"root": str(job.data.root), "label_unit": job.data.label_unit, "summary": site.summary()},
        **best,
        train_seconds=seconds,
        n_parameters=sum(p.numel() for p in model.parameters()),
        **conformal_metadata(model, site.val, device, str(job.data.root), tta=job.tta),  # prediction interval (h12)
        tta=job.tta.to_dict(),
        preprocess=None if preprocess is None else preprocess.to_dict(),
        head_init=job.head_init,
    )
    save_checkpoint(out, model, metadata)
    return metadata


def sex_subset(dataset: BoneAgeDataset, male: bool, augment: AugmentConfig | None) -> BoneAgeDataset:
    """The images of one sex of a decoded split (no second decode)."""
    keep = [i for i, record in enumerate(dataset.records) if record.male == male]
    decoded = DecodedSplit([dataset.records[i] for i in keep], dataset.images[keep], [])
    return BoneAgeDataset([], dataset.image_size, augment, dataset.seed, decoded=decoded)


def _fit(job: PretrainJob, model: nn.Module, train: BoneAgeDataset, val: BoneAgeDataset,
         device: torch.device, teacher: TeacherTargets | None = None) -> tuple[FitResult, nn.Module]:
    """Train `model` on `train` (towards `teacher`'s targets when given), keep its best state by MAD on `val`;
    returns the fit and the loss used."""
    if len(train) == 0 or len(val) == 0:
        raise DataError(f"{job.data.root}: no usable training or validation images of one sex")
    items = train if teacher is None else WithTeacher(train, teacher)
    train_loader = make_loader(items, job.train.batch_size, shuffle=True, seed=job.train.seed,
                               num_workers=job.train.num_workers, drop_last=len(train) > job.train.batch_size)
    val_loader = make_loader(val, job.train.batch_size * 2, shuffle=False, seed=job.train.seed)
    loss_fn = make_loss(model, job.loss)
    if job.init is None:  # a model started from a checkpoint keeps its trained head
        init_age_head(model, job.head_init, np.array([record.age_months for record in train.records]))
    logger.info("training %s (%d parameters) on %s: %d train / %d val images, %d px, device %s",
                job.architecture, sum(p.numel() for p in model.parameters()), job.data.root, len(train), len(val),
                model.config.image_size, device)
    result = fit(model, train_loader, val_loader, loss_fn, job.train, device)
    model.load_state_dict(result.best_state)
    return result, loss_fn


def evaluate_checkpoint(
    checkpoint: Path, data: SiteDataConfig, split: str = "test", device: str = "auto", progress: bool = False,
    one_pass: bool = False,
) -> dict[str, Any]:
    """Evaluate a saved model on one split ("train", "val", "test" or "all") of a site folder, with the test-time
    augmentation it records unless `one_pass` (to compare it with a model that records none, such as a federated or
    fine-tuned one written before descendants inherited their parent's TTA)."""
    loaded = load_checkpoint(checkpoint)
    torch_device = resolve_device(device)
    inputs = InputSettings.of(loaded)  # the model's own preprocessing (one per view for a region ensemble)
    site = load_site_views(data, inputs.image_size, inputs.views, progress=progress)
    if split == "all":
        dataset = concatenate([site.train, site.val, site.test])  # the splits as decoded, not decoded again
    else:
        dataset = {"train": site.train, "val": site.val, "test": site.test}[split]
    if len(dataset) == 0:
        raise DataError(f"{data.root}: the {split} split has no usable images")
    tta = TTAConfig() if one_pass else inputs.tta
    metrics = evaluate_model(loaded.model, dataset, torch_device, data.label_unit, tta=tta)
    metrics["split"] = split
    metrics["tta"] = tta.to_dict()
    summary = site.summary()
    metrics["skipped"] = summary["n_skipped"]
    metrics["skipped_by_reason"] = summary["skipped_by_reason"]
    return metrics

