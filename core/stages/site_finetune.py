"""One hospital adapts the pretrained model alone: freeze blocks, fine-tune the rest on its own images.

`finetune_site` trains on the site's train split (best epoch by its val split), evaluates on its test split
and saves a checkpoint with its provenance (pretrained SHA-256, freeze spec, data summary). `compare_freeze_specs`
runs every freeze spec with k-fold cross-validation over all the site's images (out-of-fold predictions, so
every image is tested once) and gives each spec's MAD and its paired difference with the unadapted model,
with 95 % bootstrap intervals over images: the paper's Table 2 for one site.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from core.predict.calibration import attach_calibration, calibration_of, fit_linear_calibration
from core.train.loss import make_loss
from core.cli import DEVICE_DEFAULT, SEED_DEFAULT
from core.checkpoint import describe, file_sha256, load_checkpoint, save_checkpoint
from core.intervals.conformal import conformal_metadata
from core.data import AugmentConfig, DataError, SiteDataConfig, load_site, make_loader
from core.data.dataset import BoneAgeDataset
from core.data.manifest import Record
from core.data.pool import DecodedPool
from core.data.split import split_of
from core.errors import ConfigError
from core.train.feature_augment import FEATURE_AUGMENT
from core.train.feature_cache import DEFAULT_VIEWS, FeatureCache, feature_budget_from_env
from core.train.feature_scoring import ScoringFeatures
from core.train.loss import JointLossConfig
from core.stats.metrics import Predictions, compute_metrics
from core.model.split import cached_depth
from core.model.freeze import FREEZE_CHOICES, FreezeSpec, format_freeze_spec, freeze_blocks, parse_freeze_spec
from core.inputs import InputSettings
from core.predict.tta import TTAConfig
from core.schema import Schema, Setting, to_bool, to_int
from core.stats.bootstrap import Interval, mad_interval, paired_difference
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


def _predict(model: nn.Module, dataset: BoneAgeDataset, device: torch.device,
             tta: TTAConfig | None = None) -> Predictions:
    return predict(model, make_loader(dataset, 64, shuffle=False, seed=0), device, tta=tta)


def _score(model: nn.Module, dataset: BoneAgeDataset, device: torch.device, tta: TTAConfig | None,
           scoring: ScoringFeatures | None) -> Predictions:
    """`model`'s predictions on `dataset` with `tta`, through the frozen blocks' cached features when it can."""
    scored = scoring.score(model, dataset, device, tta) if scoring is not None else None
    if scored is None:
        return _predict(model, dataset, device, tta)
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


def site_pool(pretrained: Path, data: SiteDataConfig, progress: bool = False) -> DecodedPool:
    """The site's images decoded once through the pretrained model's preprocessing, at its input size."""
    loaded = load_checkpoint(pretrained)
    inputs = InputSettings.of(loaded)
    return DecodedPool(data, inputs.image_size, inputs.preprocess, progress)


def folds_of(records: list[Record], folds: int, seed: int) -> list[list[Record]]:
    """Records in `folds` disjoint folds of near-equal size, deterministic for `seed`."""
    ordered = sorted(records, key=lambda r: r.image_id)
    order = np.random.default_rng(seed).permutation(len(ordered))
    return [[ordered[i] for i in sorted(order[k::folds])] for k in range(folds)]


@dataclass
class SpecResult:
    """Out-of-fold results of one freeze spec ("pretrained": no fine-tuning) on one site."""

    spec: str
    predictions: Predictions
    metrics: dict[str, Any]
    mad: Interval
    versus_pretrained: Interval | None = None


def compare_freeze_specs(pretrained: Path, data: SiteDataConfig, config: FinetuneConfig,
                         specs: tuple[str, ...] = FREEZE_CHOICES,
                         pool: DecodedPool | None = None) -> list[SpecResult]:
    """Every freeze spec with k-fold cross-validation on one site, plus the unadapted model and its per-site linear
    calibration (fitted on the other folds). Each image is read and preprocessed once (`pool`, made here when
    not given) for every fold and spec."""
    base = load_checkpoint(pretrained)
    device = resolve_device(config.device)
    pool = pool or site_pool(pretrained, data, config.progress)
    records = pool.records
    if len(records) < 2 * config.folds:
        raise DataError(f"{data.root}: {len(records)} usable images are too few for {config.folds}-fold "
                         "cross-validation; use --folds 2 or more images")
    folds = folds_of(records, config.folds, config.seed)
    tests = [pool.dataset(fold, None, config.seed) for fold in folds]
    tta = InputSettings.of(base).tta  # every spec scored as its model would be used: with the recorded TTA
    collected: dict[str, list[Predictions]] = {"pretrained": [_predict(base.model, t, device, tta) for t in tests]}
    collected["calibrated"] = calibrated_folds(collected["pretrained"])
    quiet = FinetuneConfig(**{**asdict(config), "progress": False})
    features = feature_cache_of(config)  # one for every fold and spec: a fold's features serve each spec's run
    step = 0
    for spec in specs:
        collected[spec] = []
        for k, test in enumerate(tests):
            step += 1
            rest = [r for j, fold in enumerate(folds) if j != k for r in fold]
            inner = inner_split(rest, config.seed)
            model = load_checkpoint(pretrained).model
            finetune_model(model, pool.dataset(inner["train"], AugmentConfig(), config.seed),
                           pool.dataset(inner["val"], None, config.seed), parse_freeze_spec(spec), quiet, device,
                           features)
            collected[spec].append(_predict(model, test, device, tta))
            logger.info("[%d/%d] freeze %s, fold %d/%d: fold MAD %.2f months", step, len(specs) * config.folds,
                        spec, k + 1, config.folds, float(np.mean(np.abs(collected[spec][-1].predicted_months
                                                                        - collected[spec][-1].true_months))))
    return summarise_specs(collected, base.model.config.class_step_months, data.label_unit, config.seed)


def inner_split(records: list[Record], seed: int) -> dict[str, list[Record]]:
    """A fold's training images cut into train (90 %) and val (10 %, best epoch) by id hash; when the ids all hash
    to one side (a site cut from another set's test split by the same hash), 10 % drawn at random (seeded)."""
    inner: dict[str, list[Record]] = {"train": [], "val": []}
    for record in records:
        inner["train" if split_of(record.image_id, (0.9, 0.1, 0.0)) == "train" else "val"].append(record)
    if records and not (inner["train"] and inner["val"]):
        order = np.random.default_rng(seed).permutation(len(records))
        val = set(order[:max(1, len(records) // 10)].tolist())
        inner = {"train": [r for i, r in enumerate(records) if i not in val],
                 "val": [r for i, r in enumerate(records) if i in val]}
    return inner


def calibrated_folds(pretrained: list[Predictions]) -> list[Predictions]:
    """Out-of-fold predictions of the per-site linear calibration (`core.predict.calibration`): for each fold, the line
    fitted on the unadapted model's predictions on the other folds, applied to this fold's."""
    calibrated = []
    for k, fold in enumerate(pretrained):
        rest = [p for j, p in enumerate(pretrained) if j != k]
        line = fit_linear_calibration(np.concatenate([p.predicted_months for p in rest]),
                                      np.concatenate([p.true_months for p in rest]))
        calibrated.append(Predictions(line.apply(fold.predicted_months), fold.true_months, fold.male))
    return calibrated


def summarise_specs(collected: dict[str, list[Predictions]], class_step: float, label_unit: str,
                    seed: int = 0) -> list[SpecResult]:
    """Pool each spec's out-of-fold predictions; MAD and paired difference with "pretrained", with intervals."""
    results = []
    for spec, parts in collected.items():
        joined = Predictions(*(np.concatenate([getattr(p, f) for p in parts])
                               for f in ("predicted_months", "true_months", "male")))
        results.append(SpecResult(spec, joined, compute_metrics(joined, class_step, label_unit),
                                  mad_interval(joined.predicted_months, joined.true_months, seed=seed)))
    reference = np.abs(results[0].predictions.predicted_months - results[0].predictions.true_months)
    for result in results[1:]:
        errors = np.abs(result.predictions.predicted_months - result.predictions.true_months)
        result.versus_pretrained = paired_difference(errors, reference, seed=seed)
    return results


def format_table(results: list[SpecResult], site: str) -> str:
    """The paper's Table 2 for one site, with 95 % intervals and the significant differences marked."""
    best = min(results[1:], key=lambda r: r.mad.estimate, default=results[0])
    lines = [f"Freeze specs on {site} ({results[0].metrics['n']} images, out-of-fold)", "",
             "| frozen blocks | MAD (mo) [95 % CI] | MAD (y) | RMSE (mo) | accuracy | within 1 y "
             "| vs pretrained (mo) [95 % CI] |", "|---|---|---|---|---|---|---|"]
    for r in results:
        m = r.metrics
        versus = "-" if r.versus_pretrained is None else str(r.versus_pretrained) + (
            " *" if r.versus_pretrained.excludes_zero else "")
        name = {"pretrained": "pretrained (no fine-tuning)",
                "calibrated": "calibrated (linear, no fine-tuning)"}.get(r.spec, r.spec)
        lines.append(f"| {name}{' **best**' if r is best else ''} | {r.mad} | {m['mad_months'] / 12:.3f} "
                     f"| {m['rmse_months']:.2f} | {m['accuracy']:.3f} | {m['accuracy_1y']:.3f} | {versus} |")
    lines += ["", "* the interval excludes 0: a real difference (negative = fine-tuning helps)."]
    return "\n".join(lines)
