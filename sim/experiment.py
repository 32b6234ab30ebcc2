"""The comparison `python -m sim` runs: pretrained, site alone, pooled, and federated per freeze spec."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from client.config import state_folder_name
from core.data import load_site, make_loader
from core.data.dataset import BoneAgeDataset
from core.metrics import Predictions, compute_metrics
from core.model.freeze import parse_freeze_spec
from core.preprocess import PreprocessConfig
from core.round_settings import RoundSettings
from core.training import predict, resolve_device
from server.config import FederationConfig
from server.outcome import FederationOutcome
from sim.config import SimConfig
from sim.federation import SimulatedRun, site_node_config
from sim.sites import PreparedSite

logger = logging.getLogger("ossifl.sim")


@dataclass
class Evaluation:
    """One model on one site's test split."""

    site: str
    strategy: str
    freeze: str
    metrics: dict
    predictions: Predictions
    extra: dict = field(default_factory=dict)


def load_test_splits(sites: list[PreparedSite], image_size: int,
                     preprocess: PreprocessConfig | None = None) -> dict[str, BoneAgeDataset]:
    return {site.name: load_site(site.data, image_size, None, seed=0, splits=("test",), preprocess=preprocess).test
            for site in sites}


def evaluate_everywhere(model: torch.nn.Module, sites: list[PreparedSite], tests: dict[str, BoneAgeDataset],
                        strategy: str, freeze: str, device: torch.device) -> list[Evaluation]:
    rows = []
    for site in sites:
        predictions = predict(model.to(device), make_loader(tests[site.name], 64, shuffle=False, seed=0), device)
        metrics = compute_metrics(predictions, model.config.class_step_months, site.label_unit)
        rows.append(Evaluation(site.name, strategy, freeze, metrics, predictions))
    return rows


def device_of(config: SimConfig) -> torch.device:
    """Where every stage of the simulation runs: `config.device` ("auto": a CUDA GPU when present)."""
    return resolve_device(config.device)


def federation_runs(config: SimConfig, sites: list[PreparedSite], pretrained: Path) -> list[SimulatedRun]:
    """One federated run per freeze spec (and per DP noise level when asked), each site as its node config."""
    runs: list[tuple[str, str, dict]] = [(spec, f"{config.strategy}_freeze-{spec}", {}) for spec in config.freeze_specs]
    for sigma in config.dp_noise_multipliers:
        runs.append((config.baseline_freeze, f"{config.strategy}_freeze-{config.baseline_freeze}_dp-{sigma:g}",
                     {"dp-noise-multiplier": sigma, "dp-max-grad-norm": config.dp_max_grad_norm,
                      "dp-seed": config.seed}))
    result = []
    for spec, name, dp in runs:
        out = config.out_dir / "federations" / name
        settings = RoundSettings(num_rounds=config.rounds, local_epochs=config.local_epochs, lr=config.lr,
                                 batch_size=config.batch_size, seed=config.seed, freeze=parse_freeze_spec(spec))
        federation = FederationConfig(pretrained=pretrained, settings=settings, out_dir=out, strategy=config.strategy,
                                      strategy_options=dict(config.strategy_options), min_nodes=len(sites),
                                      wandb=config.wandb, device=config.device)
        state = out / "site-state"
        nodes = tuple(site_node_config(site.path, index, state / state_folder_name(site.path), pretrained,
                                       site.label_unit, config.device, **dp) for index, site in enumerate(sites))
        result.append(SimulatedRun(federation, nodes))
    return result


def per_round_mad(outcome: FederationOutcome, sites: list[PreparedSite]) -> dict[str, list[float]]:
    """Test MAD per site and round (the simulated sites' ids are their indices in `sites`)."""
    series = outcome.per_round("evaluate", "mad-months")
    return {site.name: series.get(str(index), []) for index, site in enumerate(sites)}


def epsilon_by_site(outcome: FederationOutcome, sites: list[PreparedSite]) -> dict[str, float]:
    """The last cumulative epsilon each private site reported."""
    private = outcome.last("train", "private")
    epsilons = outcome.last("train", "epsilon")
    return {site.name: epsilons[str(i)] for i, site in enumerate(sites) if private.get(str(i)) == 1.0}
