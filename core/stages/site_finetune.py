"""One hospital adapts the pretrained model alone: freeze blocks, fine-tune the rest on its own images.

`finetune_site` trains on the site's train split (best epoch by its val split), evaluates on its test split
and saves a checkpoint with its provenance (pretrained SHA-256, freeze spec, data summary). Comparing every
freeze spec on one site (the paper's Table 2) is `core.stages.freeze_compare`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.predict.calibration import attach_calibration, calibration_of
from core.cli import DEVICE_DEFAULT, SEED_DEFAULT
from core.checkpoint import describe, file_sha256, load_checkpoint, save_checkpoint
from core.intervals.conformal import conformal_metadata
from core.data import AugmentConfig, DataError, SiteDataConfig, load_site, make_loader
from core.data.dataset import BoneAgeDataset
from core.data.pool import DecodedPool
from core.errors import ConfigError
from core.train.feature_augment import FEATURE_AUGMENT
from core.train.feature_cache import DEFAULT_VIEWS, FeatureCache, feature_budget_from_env
from core.train.feature_scoring import ScoringFeatures
from core.train.loss import JointLossConfig, make_loss
from core.stats.metrics import Predictions, compute_metrics
from core.model.split import cached_depth
from core.model.freeze import FreezeSpec, format_freeze_spec, freeze_blocks, parse_freeze_spec
from core.inputs import InputSettings
from core.predict.tta import TTAConfig
from core.schema import Schema, Setting, to_bool, to_int
from core.train.training import TrainConfig, fit, predict, resolve_device, seed_everything

logger = logging.getLogger(__name__)


def _freeze(raw: Any) -> FreezeSpec:
    if not str(raw).strip():  # an empty spec would train every block without a word
        raise ValueError("empty: give the blocks to keep frozen (e.g. 1-3), or 'none' to train every block")
    return FreezeSpec.parse(raw)


# Each fine-tuning setting declared once: `python -m client finetune`'s flags, the record's defaults and the
# checkpoint's `provenance.finetune_config` (its field names) come from here.
FINETUNE_SCHEMA = Schema(
    Setting("freeze", _freeze, "1-3", "blocks kept frozen", flag="--freeze"),
    Setting("epochs", to_int, 8, "fine-tuning epochs (for 100-300 images)", flag="--epochs"),
    Setting("lr", float, 3e-4, "learning rate (AdamW, cosine schedule)", flag="--lr"),
    Setting("batch_size", to_int, 16, "batch size", flag="--batch-size"),
    Setting("weight_decay", float, 1e-4, "AdamW weight decay", flag="--weight-decay"),
    Setting("seed", to_int, SEED_DEFAULT, "random seed", flag="--seed"),
    Setting("folds", to_int, 5, "folds of --compare's cross-validation", flag="--folds"),
    Setting("device", str, DEVICE_DEFAULT, "where to train", flag="--device"),
    Setting("progress", to_bool, True, "progress bars (off with --json)"),
    Setting("feature_cache", to_bool, True, "run the frozen blocks once per image and view",
            flag="--no-feature-cache"),
    Setting("feature_views", to_int, DEFAULT_VIEWS, "augmented views per image the feature cache keeps "
            "(epoch e trains on view e mod N)", flag="--feature-views"),
    FEATURE_AUGMENT,
)
_D = FINETUNE_SCHEMA.default


@dataclass(frozen=True)
class FinetuneConfig:
    """Local fine-tuning; the defaults (`FINETUNE_SCHEMA`) suit a site of 100-300 images on a CPU."""

    freeze: str = _D("freeze")
    epochs: int = _D("epochs")
    lr: float = _D("lr")
    batch_size: int = _D("batch_size")
    weight_decay: float = _D("weight_decay")
    seed: int = _D("seed")
    folds: int = _D("folds")
    device: str = _D("device")
    progress: bool = _D("progress")
    feature_cache: bool = _D("feature_cache")
    feature_views: int = _D("feature_views")
    feature_augment: str = _D("feature_augment")

    def __post_init__(self) -> None:
        object.__setattr__(self, "freeze", FreezeSpec.parse(self.freeze))
        if self.feature_views < 1:
            raise ConfigError(f"--feature-views must be at least 1, got {self.feature_views}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("epochs and batch size must be at least 1 and the learning rate positive")
        if self.folds < 2:
            raise ConfigError("cross-validation needs at least 2 folds")


def feature_cache_of(config: FinetuneConfig) -> FeatureCache | None:
    """The frozen-block feature cache `config` asks for (None: off)."""
    return (FeatureCache(feature_budget_from_env(), config.feature_views, augment_where=config.feature_augment)
            if config.feature_cache else None)


def finetune_model(model: nn.Module, train: BoneAgeDataset, val: BoneAgeDataset, freeze: tuple[int, ...],
                   config: FinetuneConfig, device: torch.device,
                   features: FeatureCache | None = None) -> list[dict[str, float]]:
    """Fine-tune the unfrozen blocks of `model` in place; keeps the epoch with the best val MAD.

    With `features`, the frozen prefix runs once per image and view (`core.train.feature_cache`), for the
    training and the validation split alike, and only the blocks after it train.
    """
    seed_everything(config.seed)
    freeze_blocks(model, freeze)
    model.to(device)
    val = val if len(val) else train
    trained, train_data, val_data = model, train, val
    prepared = features.prepare(model, train, device) if features is not None else None
    if prepared is not None:
        checked = features.prepare(model, val, device, prepared[0])
        if checked is not None:
            trained, train_data, val_data = prepared[0], prepared[1], checked[1]
    loss_fn = make_loss(model, JointLossConfig())
    if hasattr(loss_fn, "schedule"):
        loss_fn.schedule.raised = True  # a pretrained model's loss is already stable
    train_config = TrainConfig(epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
                               weight_decay=config.weight_decay, seed=config.seed, progress=config.progress,
                               device=str(device), channels_last=trained is model)
    loader = make_loader(train_data, config.batch_size, shuffle=True, seed=config.seed,
                         drop_last=len(train) > config.batch_size)
    result = fit(trained, loader, make_loader(val_data, 64, shuffle=False, seed=0), loss_fn, train_config, device)
    trained.load_state_dict(result.best_state)
    return result.history


def predict_dataset(model: nn.Module, dataset: BoneAgeDataset, device: torch.device,
                    tta: TTAConfig | None = None) -> Predictions:
    """`model`'s predictions on every image of `dataset` (with `tta` when given), in order."""
    return predict(model, make_loader(dataset, 64, shuffle=False, seed=0), device, tta=tta)


def _score(model: nn.Module, dataset: BoneAgeDataset, device: torch.device, tta: TTAConfig | None,
           scoring: ScoringFeatures | None) -> Predictions:
    """`model`'s predictions on `dataset` with `tta`, through the frozen blocks' cached features when it can."""
    scored = scoring.score(model, dataset, device, tta) if scoring is not None else None
    if scored is None:
        return predict_dataset(model, dataset, device, tta)
    return Predictions(scored.predicted_months, scored.true_months, scored.male)


def finetune_site(pretrained: Path, data: SiteDataConfig, out: Path, config: FinetuneConfig,
                  pool: DecodedPool | None = None, features: FeatureCache | None = None) -> dict[str, Any]:
    """Fine-tune on the site's train split, evaluate on its test split, save `out`; returns the metadata.
    `pool`: the site's images already decoded through the model's preprocessing (not decoded again).
    `features`: a frozen-block feature cache to use (and keep) instead of a new one (when the config enables it)."""
    loaded = load_checkpoint(pretrained)
    model, device = loaded.model, resolve_device(config.device)
    if calibration_of(model) is not None:  # a line fitted to these weights: fine-tuning changes them
        logger.info("%s carries a site calibration; fine-tuning starts from its weights without it", pretrained)
        attach_calibration(model, None)
    inputs = InputSettings.of(loaded)  # the site's images go through the model's own preprocessing
    if pool is not None:
        site = pool.site(AugmentConfig(), config.seed)
    else:
        site = load_site(data, inputs.image_size, AugmentConfig(), config.seed, progress=config.progress,
                         preprocess=inputs.preprocess)
    if len(site.train) == 0:
        raise DataError(f"{data.root}: no usable training images")
    empty = [name for name, split in (("validation", site.val), ("test", site.test)) if len(split) == 0]
    if empty:  # no model selection, no measured effect: a checkpoint written anyway would report 'nan' as a result
        raise DataError(f"{data.root}: no {' or '.join(empty)} images among the usable ones; fine-tuning needs "
                        f"all three splits (python -m client check shows them; add images)")
    # scored as the model is used: with the test-time augmentation the pretrained model records (and passes on);
    # with the cache, blocks 1..k run once per test and val image and TTA view for both models (checked by hash)
    freeze = parse_freeze_spec(config.freeze)
    scoring = ScoringFeatures(cached_depth(freeze), feature_budget_from_env()) if config.feature_cache else None
    before = compute_metrics(_score(model, site.test, device, inputs.tta, scoring), model.config.class_step_months,
                             data.label_unit)
    features = (features or feature_cache_of(config)) if config.feature_cache else None
    history = finetune_model(model, site.train, site.val, freeze, config, device, features)
    after = compute_metrics(_score(model, site.test, device, inputs.tta, scoring), model.config.class_step_months,
                            data.label_unit)
    val_scored = scoring.score(model, site.val, device, inputs.tta, sex_from_head=True) if scoring else None
    provenance = {"kind": "site-finetune", "pretrained": str(pretrained), "pretrained_sha256": file_sha256(pretrained),
                  "freeze": format_freeze_spec(freeze), "data": {"root": str(data.root), "label_unit": data.label_unit,
                                                                 "summary": site.summary()},
                  "finetune_config": asdict(config)}
    metadata = describe(model, seed=config.seed, provenance=provenance, history=history,
                        test_metrics={"pretrained": before, "finetuned": after}, **inputs.inherited(),
                        **conformal_metadata(model, site.val, device, str(data.root), tta=inputs.tta,
                                            scored=val_scored))
    save_checkpoint(out, model, metadata)
    logger.info("test MAD %.2f -> %.2f months (%d images); saved %s", before["mad_months"], after["mad_months"],
                after["n"], out)
    return metadata
