"""Every freeze spec on one hospital's images: the paper's Table 2 for one site.

`compare_freeze_specs` runs every freeze spec with k-fold cross-validation over all the site's images (out-of-fold
predictions, so every image is tested once) and gives each spec's MAD and its paired difference with the unadapted
model, with 95 % bootstrap intervals over images. Each fold fine-tunes as `core.stages.site_finetune` does.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.checkpoint import load_checkpoint
from core.data import AugmentConfig, DataError, SiteDataConfig
from core.data.manifest import Record
from core.data.pool import DecodedPool
from core.data.split import split_of
from core.inputs import InputSettings
from core.model.freeze import FREEZE_CHOICES, parse_freeze_spec
from core.predict.calibration import fit_linear_calibration
from core.stages.site_finetune import FinetuneConfig, feature_cache_of, finetune_model, predict_dataset
from core.stats.bootstrap import Interval, mad_interval, paired_difference
from core.stats.metrics import Predictions, compute_metrics
from core.train.training import resolve_device

logger = logging.getLogger(__name__)


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
    collected: dict[str, list[Predictions]] = {"pretrained": [predict_dataset(base.model, t, device, tta) for t in tests]}
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
            collected[spec].append(predict_dataset(model, test, device, tta))
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
