"""What a site does with one message: rebuild the model, train or evaluate, collect the reply.

Every reply of one kind carries the same metric keys at every site (`TRAIN_METRICS`,
`evaluate_metric_keys()`), so that any strategy, Flower's own FedAvg included, can average them.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Mapping

import torch
from flwr.app import ArrayRecord, RecordDict

from client.config import SiteConfig
from core.train.evaluation import evaluate_model
from core.checkpoint import CheckpointCache, CheckpointError
from core.predict.calibration import attach_calibration, fit_sex_calibration
from core.data import AugmentConfig, DataError, SiteData, make_loader
from core.data.cache import SiteDataCache, cache_budget_from_env
from core.errors import USER_ERRORS, ConfigError
from core.train.feature_augment import AUGMENT_WHERE
from core.train.feature_cache import FeatureCache, feature_budget_from_env
from core.stages.finetune import SiteRoundResult, load_arrays, train_site_round
from core.stages.local_layers import LocalLayers, SiteCalibration, load_local_layers, save_local_layers, save_site_calibration
from core.stats.metrics import AGE_GROUPS_YEARS, age_group_label
from core.model.groups import HEAD_BLOCK, blocks_not_received, parameter_groups
from core.inputs import InputSettings
from core.round_settings import RoundSettings
from core.train.training import predict, resolve_device

logger = logging.getLogger("ossifl.client")

SITE_ERRORS = USER_ERRORS  # refused with a one-line reason; anything else is a bug and crashes the reply
LOCAL_LAYERS_KEY = "ossifl-local-layers"
FREEZABLE_BLOCKS = (1, 2, 3, 4, 5, 6)
TRAIN_METRICS = ("num-examples", "val-mad-months", "train-seconds", "private", "train-loss", "train-mad-months",
                 "epsilon", "delta", "frozen-depth", *(f"frozen-block-{b}" for b in FREEZABLE_BLOCKS), "site-id")

# One of each per ClientApp process. A simulation actor answers every round's messages in the same process,
# so the pretrained model is read and the site's images are decoded once, not once per message; both caches
# check the files' size and modification time on every use. OSSIFL_DECODE_CACHE_MB bounds the decoded
# images held (default 2 GiB; 0 turns that cache off). A deployed site also keeps them in its state folder
# (node config `decode-cache`), since its SuperNode starts a fresh process for every message. The frozen
# blocks' outputs are kept too (`core.train.feature_cache`, OSSIFL_FEATURE_CACHE_MB, node config `feature-cache`), in
# the cache of the site's `feature-augment` (one per mode; a site uses one, so one holds its features).
PRETRAINED = CheckpointCache()
DECODED = SiteDataCache(cache_budget_from_env())
FEATURES = {where: FeatureCache(feature_budget_from_env(), augment_where=where) for where in AUGMENT_WHERE}


def evaluate_metric_keys() -> tuple[str, ...]:
    """The keys of every evaluation reply: overall metrics, then MAD and count per age group."""
    groups = [age_group_label(low, high) for low, high in AGE_GROUPS_YEARS]
    return ("num-examples", "mad-months", "rmse-months", "accuracy", "accuracy-1y", "bias-months",
            *(key for g in groups for key in (f"mad-{g}", f"n-{g}")), "site-id")


class SiteSession:
    """The site's model for one message: pretrained weights, then the server's arrays on top."""

    def __init__(self, site: SiteConfig, arrays: dict[str, torch.Tensor], server_config: Mapping[str, Any],
                 state: RecordDict, run_id: int = 0) -> None:
        self.site, self.state, self.run_id = site, state, run_id
        self.settings = RoundSettings.from_config(server_config)
        self.received_keys = list(arrays)
        self.federation_id = str(server_config.get("federation-id", ""))  # kept by the server across a resume
        checkpoint, digest = PRETRAINED.load(site.pretrained)
        expected = self.settings.pretrained_sha256
        if expected and digest != expected:
            raise CheckpointError(f"{site.pretrained} is not the pretrained model of this run (SHA-256 differs)")
        self.model, self.pretrained_sha256 = checkpoint.model, digest
        self.inputs = InputSettings.of(checkpoint)  # the images as the model was trained on
        load_arrays(self.model, arrays)
        kept = self._kept_layers()
        if kept:
            load_arrays(self.model, kept)
        self.device = resolve_device(site.device)
        self.round = int(server_config.get("server-round", 0))

    def load_data(self, augment: bool, splits: tuple[str, ...]) -> SiteData:
        return DECODED.load(self.site.data, self.inputs.image_size, AugmentConfig() if augment else None,
                            seed=self.settings.seed, splits=splits, disk_dir=self.site.decode_cache,
                            preprocess=self.inputs.preprocess)

    @property
    def numeric_site_id(self) -> int:
        return _numeric_id(self.site.site_id)

    def train(self) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Train the blocks whose arrays arrived (minus the site's own freeze); return those blocks' arrays."""
        frozen = tuple(sorted(set(blocks_not_received(self.received_keys)) | set(self.site.freeze)))
        if self.settings.local_layers == "head" and HEAD_BLOCK not in {*self.settings.freeze, *self.site.freeze}:
            frozen = tuple(b for b in frozen if b != HEAD_BLOCK)  # FedRep: the head never travels, yet it trains
        settings = replace(self.settings, freeze=frozen)
        data = self.load_data(augment=True, splits=("train", "val"))
        if len(data.train) == 0:
            raise DataError(f"{self.site.data.root}: the training split has no usable images")
        if settings.local_layers == "head":
            result = self._train_fedrep(data, settings)
        else:
            result = train_site_round(self.model, data.train, data.val, settings, self.device, self.round,
                                      self.site.dp, self.site.state_dir, self.site.data.label_unit,
                                      FEATURES[self.site.feature_augment] if self.site.feature_cache else None)
        groups = parameter_groups(self.model, frozen, settings.local_layers)
        self._keep_local_layers(groups.local)
        state = self.model.state_dict()
        returned = [k for k in self.received_keys if k in set(groups.shared)]  # FedBN layers never leave
        private = result.epsilon is not None
        metrics: dict[str, float] = {  # central DP averages sites uniformly: the real count stays here
            "num-examples": 1 if settings.uniform_weights else result.num_examples,
            "val-mad-months": result.val_mad_months,
            "train-seconds": result.train_seconds,
            "private": float(private),
            # under DP the noiseless training loss stays at the site; without DP there is no epsilon (0 = none)
            "train-loss": 0.0 if private else result.train_loss,
            "train-mad-months": 0.0 if private else result.train_mad_months,
            "epsilon": float(result.epsilon or 0.0), "delta": float(result.delta or 0.0),
            "frozen-depth": max(frozen, default=0),
            **{f"frozen-block-{b}": float(b in frozen) for b in FREEZABLE_BLOCKS},
            "site-id": _numeric_id(self.site.site_id),
        }
        logger.info("site %s round %d: trained blocks %s on %d images, val MAD %.2f months%s", self.site.site_id,
                    self.round, [b for b in range(1, 7) if b not in frozen], result.num_examples,
                    result.val_mad_months, f", epsilon {result.epsilon:.3f}" if private else "")
        return {k: state[k] for k in returned}, metrics

    def _train_fedrep(self, data: SiteData, settings: RoundSettings) -> SiteRoundResult:
        """FedRep (Collins et al., 2021): the site's own head first, with every other block fixed, then the shared
        blocks that train, with the head fixed; each for the round's local epochs. Not under DP-SGD (two passes
        would spend the privacy budget of one round twice)."""
        if self.site.dp.enabled:
            raise ConfigError("local-layers = head (FedRep) cannot run with DP-SGD at a site; turn one of them off")
        body = tuple(b for b in range(1, HEAD_BLOCK) if b not in settings.freeze)
        steps = [] if HEAD_BLOCK in settings.freeze else [tuple(range(1, HEAD_BLOCK))]  # the head, body fixed
        steps += [tuple(sorted({*settings.freeze, HEAD_BLOCK}))] if body else []  # then the shared blocks, head fixed
        for freeze in steps:
            result = train_site_round(self.model, data.train, data.val, replace(settings, freeze=freeze), self.device,
                                      self.round, label_unit=self.site.data.label_unit)
        return result

    def evaluate(self) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Test-split metrics; an age group with fewer than `min_group_images` images is reported as n = 0."""
        data = self.load_data(augment=False, splits=("train", "test") if self.site.calibrate else ("test",))
        if len(data.test) == 0:
            raise DataError(f"{self.site.data.root}: the test split has no usable images")
        if self.site.calibrate:
            self._calibrate(data)
        metrics = evaluate_model(self.model, data.test, self.device, self.site.data.label_unit, tta=self.inputs.tta)
        reply: dict[str, float] = {
            "num-examples": metrics["n"], "mad-months": metrics["mad_months"],
            "rmse-months": metrics["rmse_months"], "accuracy": metrics["accuracy"],
            "accuracy-1y": metrics["accuracy_1y"], "bias-months": metrics["bias_months"],
        }
        for low, high in AGE_GROUPS_YEARS:
            group = age_group_label(low, high)
            count = int(metrics["n_by_age_group"].get(group, 0))
            shown = count >= self.site.min_group_images
            reply[f"mad-{group}"] = float(metrics["mad_by_age_group"][group]) if shown else 0.0
            reply[f"n-{group}"] = count if shown else 0
        reply["site-id"] = _numeric_id(self.site.site_id)
        return {}, reply

    def _calibrate(self, data: SiteData) -> None:
        """Node config `calibrate`: fit the site's sex-specific line from the model's predictions to its labels on its
        training split, attach it (the test metrics are those of the calibrated predictions, what the site would
        report) and keep it in the state folder for `client export`."""
        if len(data.train) < 2:
            raise DataError(f"{self.site.data.root}: calibrate = true needs training images to fit the site's line")
        fitted = predict(self.model.to(self.device), make_loader(data.train, 64, shuffle=False, seed=0), self.device,
                         tta=self.inputs.tta)  # the predictions the line will correct: with the model's TTA
        line = fit_sex_calibration(fitted.predicted_months, fitted.true_months, fitted.male)
        attach_calibration(self.model, line)
        save_site_calibration(self.site.state_dir, SiteCalibration(line, self.round, self.pretrained_sha256,
                                                                   self.federation_id, len(data.train)))
        logger.info("site %s round %d: calibration fitted on %d training images (boys %.2f + %.3f x, girls %.2f + "
                    "%.3f x)", self.site.site_id, self.round, len(data.train), line.boys.intercept, line.boys.slope,
                    line.girls.intercept, line.girls.slope)

    def _kept_layers(self) -> dict[str, torch.Tensor] | None:
        """FedBN: this run's local layers, from the node state or (after a SuperNode restart) the state folder."""
        if LOCAL_LAYERS_KEY in self.state.array_records:
            return self.state.array_records[LOCAL_LAYERS_KEY].to_torch_state_dict()
        saved = load_local_layers(self.site.state_dir) if self.settings.local_layers != "none" else None
        same_run = saved is not None and (saved.run_id == self.run_id or (
            bool(self.federation_id) and saved.federation_id == self.federation_id))
        if saved and same_run and saved.pretrained_sha256 == self.pretrained_sha256:
            return saved.layers
        return None

    def _keep_local_layers(self, local: tuple[str, ...]) -> None:
        """FedBN: the site's normalisation layers stay in its state for the next round and in its state folder."""
        if local:
            state = self.model.state_dict()
            kept = {k: state[k] for k in local}
            self.state.array_records[LOCAL_LAYERS_KEY] = ArrayRecord(kept)
            save_local_layers(self.site.state_dir, LocalLayers(kept, self.run_id, self.round, self.pretrained_sha256,
                                                               self.federation_id))


def _numeric_id(site_id: str) -> int:
    """Numeric site ids travel as `site-id` (-1 for a named site: the server reports it by node id)."""
    return int(site_id) if site_id.isdigit() else -1
