"""The comparison `python -m sim` runs: pretrained, site alone, pooled, and federated per freeze spec."""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from core.data import load_site, make_loader
from core.data.dataset import BoneAgeDataset
from core.errors import FederationFailed
from core.metrics import Predictions, compute_metrics
from core.preprocess import PreprocessConfig
from core.training import predict
from server.config import FederationConfig
from sim.config import SimConfig
from sim.sites import PreparedSite

logger = logging.getLogger("ossifl.sim")
CPU = torch.device("cpu")


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
                        strategy: str, freeze: str) -> list[Evaluation]:
    rows = []
    for site in sites:
        predictions = predict(model, make_loader(tests[site.name], 64, shuffle=False, seed=0), CPU)
        metrics = compute_metrics(predictions, model.config.class_step_months, site.label_unit)
        rows.append(Evaluation(site.name, strategy, freeze, metrics, predictions))
    return rows


def federation_configs(config: SimConfig, sites: list[PreparedSite], pretrained: Path) -> list[FederationConfig]:
    """One federated run per freeze spec (and per DP noise level when asked)."""
    forwarded = {"sim-site-paths": ";".join(str(s.path) for s in sites),
                 "sim-site-units": ";".join(s.label_unit for s in sites), "device": "cpu"}
    runs: list[tuple[str, str, dict]] = [(spec, f"{config.strategy}_freeze-{spec}", {}) for spec in config.freeze_specs]
    for sigma in config.dp_noise_multipliers:
        runs.append((config.baseline_freeze, f"{config.strategy}_freeze-{config.baseline_freeze}_dp-{sigma:g}",
                     {"dp-noise-multiplier": sigma, "dp-max-grad-norm": config.dp_max_grad_norm,
                      "dp-seed": config.seed}))
    configs = []
    for spec, name, extra in runs:
        out = config.out_dir / "federations" / name
        configs.append(FederationConfig(
            pretrained=pretrained, out_dir=out, num_rounds=config.rounds, strategy=config.strategy, freeze=spec,
            local_epochs=config.local_epochs, lr=config.lr, batch_size=config.batch_size, seed=config.seed,
            min_nodes=len(sites), wandb=config.wandb,
            forwarded={**forwarded, "sim-state-dir": str(out / "site-state"), **extra}))
    return configs


def run_federations(configs: list[FederationConfig], num_sites: int, cpus_per_site: int = 1) -> None:
    """All federated runs in one session of Flower's simulation engine.

    Each simulated site claims `cpus_per_site` of the machine's cores, so cores // cpus_per_site sites train
    at once (2 sites on 2 cores by default; `cpus_per_site=2` there runs them one after the other).
    """
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    from flwr.simulation import run_simulation

    from client.app import app as client_app
    from server.app import make_server_app

    outcomes: list = []
    resources = {"num_cpus": cpus_per_site, "num_gpus": 0.0}
    run_simulation(server_app=make_server_app(configs, outcomes), client_app=client_app,
                   num_supernodes=num_sites, backend_config={"client_resources": resources})
    if len(outcomes) != len(configs):
        raise FederationFailed(f"only {len(outcomes)} of {len(configs)} federated runs finished; see the log above")


def per_round_mad(out_dir: Path, sites: list[PreparedSite]) -> dict[str, list[float]]:
    """Test MAD per site and round from a federation's metrics.csv (site ids are partition indices)."""
    by_site: dict[str, dict[int, float]] = {s.name: {} for s in sites}
    with open(out_dir / "metrics.csv", newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["phase"] == "evaluate" and row["metric"] == "mad-months" and row["site"].isdigit():
                index = int(row["site"])
                if index < len(sites):
                    by_site[sites[index].name][int(row["round"])] = float(row["value"])
    return {name: [rounds[r] for r in sorted(rounds)] for name, rounds in by_site.items()}


def epsilon_by_site(out_dir: Path, sites: list[PreparedSite]) -> dict[str, float]:
    """The last cumulative epsilon each site reported."""
    result: dict[str, float] = {}
    with open(out_dir / "metrics.csv", newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["phase"] == "train" and row["metric"] == "epsilon" and row["site"].isdigit():
                result[sites[int(row["site"])].name] = float(row["value"])
    return result

