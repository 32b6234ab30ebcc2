"""What a site does with one message: rebuild the model, train or evaluate, collect the reply."""

from __future__ import annotations

import logging
from typing import Any, Mapping

import torch
from flwr.app import ArrayRecord, RecordDict

from client.config import SiteConfig
from core.checkpoint import CheckpointCache, CheckpointError
from core.data import AugmentConfig, DataError, SiteData
from core.data.cache import SiteDataCache, cache_budget_from_env
from core.errors import USER_ERRORS
from core.finetune import RoundSettings, load_arrays, norm_layer_keys, train_site_round, with_freeze
from core.central import evaluate_model
from core.model.freeze import block_of_key, parse_freeze_spec
from core.preprocess import preprocess_config_of
from core.training import resolve_device

logger = logging.getLogger("ossifl.client")

SITE_ERRORS = USER_ERRORS  # refused with a one-line reason; anything else is a bug and crashes the reply
LOCAL_LAYERS_KEY = "ossifl-local-layers"

# One of each per ClientApp process. A simulation actor answers every round's messages in the same process,
# so the pretrained model is read and the site's images are decoded once, not once per message; both caches
# check the files' size and modification time on every use. OSSIFL_DECODE_CACHE_MB bounds the decoded
# images held (default 2 GiB; 0 turns that cache off). A deployed site also keeps them in its state folder
# (node config `decode-cache`), since its SuperNode starts a fresh process for every message.
PRETRAINED = CheckpointCache()
DECODED = SiteDataCache(cache_budget_from_env())


class SiteSession:
    """The site's model for one message: pretrained weights, then the server's arrays on top."""

    def __init__(self, site: SiteConfig, arrays: dict[str, torch.Tensor], server_config: Mapping[str, Any],
                 state: RecordDict) -> None:
        self.site, self.config, self.state = site, server_config, state
        self.received_keys = list(arrays)
        checkpoint, digest = PRETRAINED.load(site.pretrained)
        expected = server_config.get("pretrained-sha256")
        if expected and digest != expected:
            raise CheckpointError(f"{site.pretrained} is not the pretrained model of this run (SHA-256 differs)")
        self.model = checkpoint.model
        self.preprocess = preprocess_config_of(checkpoint.metadata)  # the images as the model was trained on
        load_arrays(self.model, arrays)
        if LOCAL_LAYERS_KEY in state.array_records:
            load_arrays(self.model, state.array_records[LOCAL_LAYERS_KEY].to_torch_state_dict())
        self.device = resolve_device(site.device)
        self.round = int(server_config.get("server-round", 0))

    def _settings(self) -> RoundSettings:
        c = self.config
        settings = RoundSettings(
            local_epochs=int(c.get("local-epochs", 1)), lr=float(c.get("lr", 3e-4)),
            batch_size=int(c.get("batch-size", 32)), proximal_mu=float(c.get("proximal-mu", 0.0)),
            seed=int(c.get("seed", 0)), freeze=parse_freeze_spec(str(c.get("freeze", "1-3"))),
            planned_rounds=int(c.get("num-rounds", 1)),
        )
        return with_freeze(settings, self.site.freeze)

    def _data(self, augment: bool, splits: tuple[str, ...]) -> SiteData:
        return DECODED.load(self.site.data, self.model.config.image_size, AugmentConfig() if augment else None,
                            seed=int(self.config.get("seed", 0)), splits=splits, disk_dir=self.site.decode_cache,
                            preprocess=self.preprocess)

    def train(self) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        settings = self._settings()
        data = self._data(augment=True, splits=("train", "val"))
        if len(data.train) == 0:
            raise DataError(f"{self.site.data.root}: the training split has no usable images")
        result = train_site_round(self.model, data.train, data.val, settings, self.device, self.round,
                                  self.site.dp, self.site.state_dir, self.site.data.label_unit)
        self._keep_local_layers()
        state = self.model.state_dict()
        # a site that freezes deeper than the run returns only the blocks it trained
        keys = [k for k in self.received_keys if block_of_key(k) not in settings.freeze]
        metrics: dict[str, float] = {  # central DP averages sites uniformly: the real count stays here
            "num-examples": 1 if self.config.get("central-dp", False) else result.num_examples,
            "val-mad-months": result.val_mad_months,
            "frozen-depth": max(settings.freeze, default=0),
            "train-seconds": result.train_seconds,
        }
        if result.epsilon is None:  # under DP, the noiseless training loss stays at the site
            metrics["train-loss"] = result.train_loss
            metrics["train-mad-months"] = result.train_mad_months
        else:
            metrics["epsilon"] = result.epsilon
            metrics["delta"] = float(result.delta)
        _add_site_id(metrics, self.site.site_id)
        logger.info("site %s round %d: trained on %d images, val MAD %.2f months%s", self.site.site_id,
                    self.round, result.num_examples, result.val_mad_months,
                    "" if result.epsilon is None else f", epsilon {result.epsilon:.3f}")
        return {k: state[k] for k in keys}, metrics

    def evaluate(self) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        data = self._data(augment=False, splits=("test",))
        if len(data.test) == 0:
            raise DataError(f"{self.site.data.root}: the test split has no usable images")
        metrics = evaluate_model(self.model, data.test, self.device, self.site.data.label_unit)
        reply: dict[str, float] = {
            "num-examples": metrics["n"], "mad-months": metrics["mad_months"],
            "rmse-months": metrics["rmse_months"], "accuracy": metrics["accuracy"],
            "accuracy-1y": metrics["accuracy_1y"], "bias-months": metrics["bias_months"],
        }
        for group, mad in metrics["mad_by_age_group"].items():
            reply[f"mad-{group}"] = mad
        _add_site_id(reply, self.site.site_id)
        return {}, reply

    def _keep_local_layers(self) -> None:
        local = str(self.config.get("local-layers", "none"))
        if local == "none":
            return
        state = self.model.state_dict()
        self.state.array_records[LOCAL_LAYERS_KEY] = ArrayRecord(
            {k: state[k] for k in norm_layer_keys(self.model) if k not in self.received_keys})


def _add_site_id(metrics: dict[str, float], site_id: str) -> None:
    """Numeric site ids travel as `site-id` (the server reports others by node id)."""
    if site_id.isdigit():
        metrics["site-id"] = int(site_id)
