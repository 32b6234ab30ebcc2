"""One federated run: start from the pretrained model, send the unfrozen arrays, aggregate,
evaluate every round, checkpoint the merged model every round, resume after a crash; optionally
under central (client-level) DP, stopping cleanly when its budget is reached."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.exception import PrivacyBudgetExhausted

from core.central import evaluate_model
from core.checkpoint import describe, file_sha256, load_checkpoint, save_checkpoint
from core.data import BoneAgeDataset, SiteDataConfig, load_site
from core.errors import ConfigError
from core.preprocess import PreprocessConfig, preprocess_config_of
from core.finetune import norm_layer_keys
from core.model.freeze import freeze_blocks, parse_freeze_spec, trainable_state_keys
from core.training import resolve_device
from server.central_dp import wrap_central_dp
from server.config import FederationConfig
from server.tracking import MetricsTracker
from strategies import build_strategy

logger = logging.getLogger("ossifl.server")

LATEST = "federated_latest.pt"
FINAL = "federated_final.pt"
DEFAULT_PROXIMAL_MU = 0.01


@dataclass
class FederationOutcome:
    final_checkpoint: Path
    rounds_done: int
    shared_keys: list[str]
    bytes_per_site_per_round: int


def shared_keys(model: torch.nn.Module, local_layers: str) -> list[str]:
    """State keys the server sends: the unfrozen blocks, minus site-local layers in FedBN mode."""
    keys = trainable_state_keys(model)
    if local_layers == "norm":
        local = set(norm_layer_keys(model))
        keys = [k for k in keys if k not in local]
    return keys


def run_federation(grid: Grid, config: FederationConfig) -> FederationOutcome:
    """Run `config.num_rounds` rounds (fewer when resuming) and save the merged model."""
    pretrained = load_checkpoint(config.pretrained)
    model = pretrained.model
    freeze_blocks(model, parse_freeze_spec(config.freeze))
    start_round = 0
    strategy_state: dict[str, Any] | None = None
    accountant_state: dict[str, Any] | None = None
    latest = config.out_dir / LATEST
    if config.resume and latest.exists():
        resumed = load_checkpoint(latest)
        model.load_state_dict(resumed.model.state_dict())
        start_round = int(resumed.metadata["round"])
        strategy_state = resumed.metadata.get("strategy_state")
        accountant_state = resumed.metadata.get("central_dp_state")
        if config.central_dp and accountant_state is None:
            raise ConfigError(f"cannot resume under central DP: {latest} has no accountant state "
                             "(the rounds before it ran without central DP)")
        logger.info("resuming after round %d from %s", start_round, latest)
    keys = shared_keys(model, config.local_layers)
    tracker = MetricsTracker(config.out_dir, config.wandb, run_name=f"{config.strategy}-freeze{config.freeze}",
                             config={k: str(v) for k, v in asdict(config).items()})
    options = {"proximal_mu": config.proximal_mu or DEFAULT_PROXIMAL_MU} if config.strategy == "fedprox" else {}
    strategy = build_strategy(config.strategy, round_offset=start_round, on_site_reports=tracker.site_reports,
                              min_nodes=config.min_nodes, **options)
    if strategy_state is not None:
        strategy.load_state_dict(strategy_state)
    private = wrap_central_dp(strategy, config, model, keys, accountant_state) if config.central_dp else None
    rounds_done = start_round
    preprocess = pretrained.metadata.get("preprocess")  # every image this model sees is preprocessed the same way
    central = _central_set(config, model.config.image_size, preprocess_config_of(pretrained.metadata))
    device = resolve_device(str(config.forwarded.get("device", "auto")))
    site_config = {**config.site_config(), "pretrained-sha256": file_sha256(config.pretrained)}
    last_merge = time.perf_counter()

    def merge_and_checkpoint(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        nonlocal rounds_done, last_merge
        real_round = server_round + start_round
        if server_round > 0:  # since the last merge: the previous round's evaluation, this round's training
            tracker.round_timing(real_round, time.perf_counter() - last_merge)
        model.load_state_dict(arrays.to_torch_state_dict(), strict=False)
        metrics: dict[str, float] = {}
        if central is not None:
            result = evaluate_model(model, central, device, config.central_label_unit)
            metrics = {k: float(v) for k, v in result.items() if isinstance(v, (int, float))}
            tracker.central(real_round, metrics)
            logger.info("round %d: central MAD %.2f months", real_round, metrics["mad_months"])
        if server_round > 0:
            rounds_done = real_round
            dp_meta: dict[str, Any] = {}
            if private is not None:
                tracker.central(real_round, {"central-epsilon": private.epsilon()})
                dp_meta["central_dp_state"] = private.accountant_state()
            save_checkpoint(latest, model, describe(model, round=real_round, strategy=config.strategy,
                                                    strategy_state=strategy.state_dict(), seed=config.seed,
                                                    run_config={k: str(v) for k, v in asdict(config).items()},
                                                    preprocess=preprocess, **dp_meta))
        last_merge = time.perf_counter()
        return MetricRecord(metrics) if metrics else None

    initial = ArrayRecord({k: model.state_dict()[k] for k in keys})
    remaining = config.num_rounds - start_round
    try:
        if remaining > 0:
            runner = strategy if private is None else private
            runner.start(grid=grid, initial_arrays=initial, num_rounds=remaining, timeout=config.timeout,
                         train_config=ConfigRecord(site_config), evaluate_config=ConfigRecord(site_config),
                         evaluate_fn=merge_and_checkpoint)
    except PrivacyBudgetExhausted as exc:
        logger.warning("central DP budget reached after round %d: stopping; the model of round %d is kept (%s)",
                       rounds_done, rounds_done, exc)
    finally:
        tracker.close()
    final = config.out_dir / FINAL
    dp_meta = {} if private is None else {"central_epsilon": private.epsilon(),
                                          "central_delta": config.central_dp_delta}
    save_checkpoint(final, model, describe(model, round=rounds_done, strategy=config.strategy,
                                           seed=config.seed, pretrained=str(config.pretrained),
                                           preprocess=preprocess, **dp_meta))
    shared = set(keys)
    nbytes = sum(v.numel() * v.element_size() for k, v in model.state_dict().items() if k in shared)
    logger.info("federation done: %d rounds, %d arrays (%.1f kB) per site and round, final model %s%s",
                rounds_done, len(keys), nbytes / 1024, final,
                "" if private is None else f", central epsilon {private.epsilon():.3f}")
    return FederationOutcome(final, rounds_done, keys, nbytes)


def _central_set(config: FederationConfig, image_size: int,
                 preprocess: PreprocessConfig | None) -> BoneAgeDataset | None:
    """The test split of the central set the server evaluates every round, if one is given."""
    if config.central_data is None:
        return None
    data = load_site(SiteDataConfig(root=config.central_data, label_unit=config.central_label_unit),
                     image_size, None, seed=0, splits=("test",), preprocess=preprocess)
    return data.test
