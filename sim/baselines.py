"""What every federated freeze spec is compared with, per seed: the pretrained model unadapted, a per-site linear
calibration of its predictions, each site alone per freeze spec, all sites pooled, the federated model fine-tuned
locally at each site (the simplest personalised federated learning) and the federated model under each site's own
sex-specific output calibration (a reader-convention head on the shared anatomy).

With a `cross` list, each site's own model (site alone at the baseline freeze spec, federated then local, federated
then calibrated) is also scored on every other site's test split (`sim.cross_site`)."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import torch

from core.predict.calibration import fit_linear_calibration, fit_sex_calibration
from core.checkpoint import load_checkpoint
from core.data import AugmentConfig, load_site, make_loader
from core.data.dataset import BoneAgeDataset
from core.train.feature_cache import FeatureCache, feature_budget_from_env
from core.stages.finetune import train_site_round
from core.stats.metrics import Predictions, compute_metrics
from core.model.freeze import parse_freeze_spec
from core.inputs import InputSettings
from core.preprocess import PreprocessConfig
from core.round_settings import RoundSettings
from core.train.training import predict
from sim.config import SimConfig
from sim.experiment import Evaluation, device_of, evaluate_everywhere, evaluate_site_model
from sim.sites import PreparedSite

logger = logging.getLogger("ossifl.sim")


def feature_cache_of(config: SimConfig) -> FeatureCache | None:
    """The frozen-block feature cache of the baselines (None with `--no-feature-cache`), augmenting where
    `--feature-augment` says."""
    return (FeatureCache(feature_budget_from_env(), augment_where=config.feature_augment) if config.feature_cache
            else None)


def local_rounds(model: torch.nn.Module, train: BoneAgeDataset, val: BoneAgeDataset, config: SimConfig,
                 freeze: str, features: FeatureCache | None = None) -> torch.nn.Module:
    """The same rounds of local training a site does in the federation, without averaging."""
    settings = RoundSettings(local_epochs=config.local_epochs, lr=config.lr, batch_size=config.batch_size,
                             seed=config.seed, freeze=parse_freeze_spec(freeze), num_rounds=config.rounds)
    for round_number in range(1, config.rounds + 1):
        train_site_round(model, train, val, settings, device_of(config), round_number, features=features)
    return model


def calibrated(model: torch.nn.Module, site: PreparedSite, train: BoneAgeDataset, test: BoneAgeDataset,
               class_step: float) -> Evaluation:
    """The pretrained model with a straight line fitted on the site's training split applied to its outputs."""
    device = next(model.parameters()).device  # where the caller put it
    fitted = predict(model, make_loader(train, 64, shuffle=False, seed=0), device)
    line = fit_linear_calibration(fitted.predicted_months, fitted.true_months)
    raw = predict(model, make_loader(test, 64, shuffle=False, seed=0), device)
    adjusted = Predictions(line.apply(raw.predicted_months).astype(raw.predicted_months.dtype), raw.true_months,
                           raw.male)
    return Evaluation(site.name, "calibrated", "all", compute_metrics(adjusted, class_step, site.label_unit), adjusted,
                      {"intercept": line.intercept, "slope": line.slope})


def run_baselines(config: SimConfig, sites: list[PreparedSite], pretrained: Path,
                  tests: dict[str, BoneAgeDataset], cross: list[Evaluation] | None = None) -> list[Evaluation]:
    """Baselines of one seed (`config.seed`); each row's extra["seed"] says which."""
    size = config.image_size
    loaded = load_checkpoint(pretrained)
    base, preprocess = loaded.model, InputSettings.of(loaded).preprocess
    step = base.config.class_step_months
    rows = evaluate_everywhere(base, sites, tests, "pretrained", "all", device_of(config))
    features = feature_cache_of(config)
    pooled_train, pooled_val = [], []
    for site in sites:
        data = load_site(site.data, size, AugmentConfig(), seed=config.seed, preprocess=preprocess)
        pooled_train += data.train.records
        pooled_val += data.val.records
        plain_train = BoneAgeDataset(data.train.records, size, None, config.seed, preprocess=preprocess)
        rows.append(calibrated(base, site, plain_train, tests[site.name], step))
        for spec in config.freeze_specs:
            logger.info("baseline (seed %d): %s alone, freeze %s, %d rounds", config.seed, site.name, spec,
                        config.rounds)
            model = local_rounds(load_checkpoint(pretrained).model, data.train, data.val, config, spec, features)
            rows += evaluate_site_model(model, site, sites, tests, "site-alone", spec, device_of(config),
                                        cross if spec == config.baseline_freeze else None)
    logger.info("baseline (seed %d): all %d sites pooled (%d training images, freeze %s)", config.seed, len(sites),
                len(pooled_train), config.baseline_freeze)
    pooled = (BoneAgeDataset(pooled_train, size, AugmentConfig(), config.seed, preprocess=preprocess),
              BoneAgeDataset(pooled_val, size, None, config.seed, preprocess=preprocess))
    model = local_rounds(load_checkpoint(pretrained).model, *pooled, config, config.baseline_freeze, features)
    rows += evaluate_everywhere(model, sites, tests, "pooled", config.baseline_freeze, device_of(config))
    for row in rows:
        row.extra["seed"] = config.seed
    for row in cross or []:
        row.extra.setdefault("seed", config.seed)
    return rows


def federated_then_local(config: SimConfig, sites: list[PreparedSite], federated: Path, freeze: str,
                         tests: dict[str, BoneAgeDataset], cross: list[Evaluation] | None = None) -> list[Evaluation]:
    """Each site fine-tunes the federated model on its own images for the same rounds as a site alone, and fits
    its own sex-specific calibration of the federated model's outputs (`federated_calibrated`)."""
    rows, features = [], feature_cache_of(config)
    loaded = load_checkpoint(federated)
    for site in sites:
        data = load_site(site.data, config.image_size, AugmentConfig(), seed=config.seed, splits=("train", "val"),
                         preprocess=InputSettings.of(loaded).preprocess)
        model = local_rounds(load_checkpoint(federated).model, data.train, data.val, config, freeze, features)
        rows += evaluate_site_model(model, site, sites, tests, f"{config.strategy}+local", freeze, device_of(config),
                                    cross)
    rows += federated_calibrated(config, sites, loaded.model, InputSettings.of(loaded).preprocess, freeze, tests,
                                 cross)
    for row in [*rows, *(cross or [])]:
        row.extra.setdefault("seed", config.seed)
    return rows


def federated_calibrated(config: SimConfig, sites: list[PreparedSite], model: torch.nn.Module,
                         preprocess: PreprocessConfig | None, freeze: str, tests: dict[str, BoneAgeDataset],
                         cross: list[Evaluation] | None = None, name: str = "") -> list[Evaluation]:
    """The shared (federated) model with each site's own sex-specific line fitted on its training split and applied
    to its outputs: the site keeps the federation's anatomy and its own reader convention (`<strategy>+calib`, or
    `<name>+calib`)."""
    device, step = device_of(config), model.config.class_step_months
    model = model.to(device)
    raw = {key: predict(model, make_loader(test, 64, shuffle=False, seed=0), device) for key, test in tests.items()}
    units = {site.name: site.label_unit for site in sites}
    rows = []
    for site in sites:
        train = load_site(site.data, config.image_size, None, seed=config.seed, splits=("train",),
                          preprocess=preprocess).train
        fitted = predict(model, make_loader(train, 64, shuffle=False, seed=0), device)
        line = fit_sex_calibration(fitted.predicted_months, fitted.true_months, fitted.male)
        for target in (sites if cross is not None else [site]):
            p = raw[target.name]
            adjusted = Predictions(line.apply(p.predicted_months, p.male).astype(p.predicted_months.dtype),
                                   p.true_months, p.male)
            row = Evaluation(target.name, f"{name or config.strategy}+calib", freeze,
                             compute_metrics(adjusted, step, units[target.name]), adjusted,
                             {"seed": config.seed, "model_site": site.name})
            if target.name == site.name:
                rows.append(row)
            if cross is not None:
                cross.append(row)
    return rows


def seeded(config: SimConfig, seed: int) -> SimConfig:
    """The config of one repetition: its seed and, with several seeds, its own output folder."""
    if config.seeds == 1:
        return config
    return replace(config, seed=seed, seeds=1, out_dir=config.out_dir / f"seed-{seed}")
