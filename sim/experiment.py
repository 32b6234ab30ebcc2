"""The comparison `python -m sim` runs: pretrained, site alone, pooled, and federated per freeze spec."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from client.config import state_folder_name
from core.checkpoint import load_checkpoint
from core.data import load_site, make_loader
from core.errors import FederationFailed
from core.stages.finetune import load_arrays
from core.stages.local_layers import load_local_layers
from core.data.dataset import BoneAgeDataset
from core.stats.metrics import Predictions, compute_metrics
from core.privacy import DPConfig
from core.model.freeze import parse_freeze_spec
from core.preprocess import PreprocessConfig
from core.round_settings import RoundSettings
from core.train.training import predict, resolve_device
from server.config import FederationConfig
from server.outcome import FederationOutcome
from sim.config import SimConfig
from sim.federation import SimulatedRun, manifest_keys, site_node_config
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


def evaluate_site_model(model: torch.nn.Module, owner: PreparedSite, sites: list[PreparedSite],
                        tests: dict[str, BoneAgeDataset], strategy: str, freeze: str, device: torch.device,
                        cross: list[Evaluation] | None = None) -> list[Evaluation]:
    """A site's own model on its own test split (the returned row) and, when `cross` is given, on every site's
    test split (appended to `cross`, each row's extra["model_site"] naming the owner)."""
    if cross is None:
        return evaluate_everywhere(model, [owner], tests, strategy, freeze, device)
    everywhere = evaluate_everywhere(model, sites, tests, strategy, freeze, device)
    for row in everywhere:
        row.extra["model_site"] = owner.name
    cross += everywhere
    return [row for row in everywhere if row.site == owner.name]


def device_of(config: SimConfig) -> torch.device:
    """Where every stage of the simulation runs: `config.device` ("auto": a CUDA GPU when present)."""
    return resolve_device(config.device)


def fedbn_name(strategy: str) -> str:
    """The method name of FedBN rows: the run's strategy with each site's normalisation layers kept local."""
    return f"{strategy}+fedbn"


def fedrep_name(strategy: str) -> str:
    """The method name of FedRep rows: the run's strategy with each site's head (block 6) kept and trained first."""
    return f"{strategy}+fedrep"


LOCAL_LAYER_RUNS = {"norm": ("fedbn", fedbn_name), "head": ("fedrep", fedrep_name)}  # local-layers -> suffix, name


def federation_runs(config: SimConfig, sites: list[PreparedSite], pretrained: Path) -> list[SimulatedRun]:
    """One federated run per freeze spec, one with the norm layers kept at the sites (FedBN, at the baseline
    freeze spec), one with each site's head kept (FedRep, when `config.fedrep`) and one per DP noise level when
    asked; each site as its node config."""
    base = config.baseline_freeze
    runs: list[tuple[str, str, str, dict]] = [(spec, f"{config.strategy}_freeze-{spec}", "none", {})
                                              for spec in config.freeze_specs]
    for kept in ("norm", "head") if config.fedrep else ("norm",):
        runs.append((base, f"{config.strategy}_freeze-{base}_{LOCAL_LAYER_RUNS[kept][0]}", kept, {}))
    for sigma in config.dp_noise_multipliers:
        runs.append((base, f"{config.strategy}_freeze-{base}_dp-{sigma:g}", "none",
                     DPConfig(enabled=True, noise_multiplier=sigma, max_grad_norm=config.dp_max_grad_norm,
                              max_epsilon=config.dp_max_epsilon, seed=config.seed).node_config()))
    return [simulated_run(config, sites, pretrained, *run) for run in runs]


def simulated_run(config: SimConfig, sites: list[PreparedSite], pretrained: Path, spec: str, name: str,
                  local_layers: str = "none", dp: dict | None = None) -> SimulatedRun:
    """One federation of `sites` (each as its node config) under `config`'s round settings and strategy."""
    out = config.out_dir / "federations" / name
    settings = RoundSettings(num_rounds=config.rounds, local_epochs=config.local_epochs, lr=config.lr,
                             batch_size=config.batch_size, seed=config.seed, freeze=parse_freeze_spec(spec),
                             local_layers=local_layers)
    federation = FederationConfig(pretrained=pretrained, settings=settings, out_dir=out, strategy=config.strategy,
                                  strategy_options=dict(config.strategy_options), min_nodes=len(sites),
                                  wandb=config.wandb, device=config.device)
    state = out / "site-state"
    nodes = tuple(site_node_config(site.path, index, state / state_folder_name(site.path), pretrained,
                                   site.label_unit, config.device, **manifest_keys(site.data), **(dp or {}),
                                   **{"feature-cache": config.feature_cache,
                                      "feature-augment": config.feature_augment})
                  for index, site in enumerate(sites))
    return SimulatedRun(federation, nodes)


def without_site_name(strategy: str) -> str:
    """The method name of leave-one-site-out rows: the federation of the other sites, scored on the one left out."""
    return f"{strategy}-without-site"


def leave_one_out_runs(config: SimConfig, sites: list[PreparedSite], pretrained: Path) -> list[SimulatedRun]:
    """For each site j, a federation of the other sites (baseline freeze spec), to be scored on site j's test
    split: what the federated model is worth to a hospital that did not take part."""
    base = config.baseline_freeze
    return [simulated_run(config, [s for s in sites if s.name != held.name], pretrained, base,
                          f"{config.strategy}_freeze-{base}_without-{held.name}") for held in sites]


def evaluate_fedbn(outcome: FederationOutcome, run: SimulatedRun, sites: list[PreparedSite],
                   tests: dict[str, BoneAgeDataset], strategy: str, device: torch.device,
                   cross: list[Evaluation] | None = None) -> list[Evaluation]:
    """Each site's FedBN (or FedRep) model on its own test split: the federated model with that site's own
    normalisation layers (or head), as the site kept them in its state folder after the last round it trained in;
    with `cross`, also on every other site's test split (see `evaluate_site_model`)."""
    kind, name = LOCAL_LAYER_RUNS[run.config.settings.local_layers]
    last = outcome.rounds[-1] if outcome.rounds else None
    rows = []
    for index, site in enumerate(sites):
        kept = load_local_layers(Path(run.sites[index]["state-dir"]))
        if last is None or str(index) not in last.train or kept is None or kept.round != last.round:
            raise FederationFailed(f"{kind}: site {site.name} did not train in the last round "
                                   f"({outcome.rounds_done}), so it has no local layers of this run; see the log above")
        model = load_checkpoint(outcome.final_checkpoint).model
        load_arrays(model, kept.layers)
        rows += evaluate_site_model(model, site, sites, tests, name(strategy), run.config.freeze, device, cross)
    return rows


def per_round_mad(outcome: FederationOutcome, sites: list[PreparedSite]) -> dict[str, list[float]]:
    """Test MAD per site and round (the simulated sites' ids are their indices in `sites`)."""
    series = outcome.per_round("evaluate", "mad-months")
    return {site.name: series.get(str(index), []) for index, site in enumerate(sites)}


def epsilon_by_site(outcome: FederationOutcome, sites: list[PreparedSite]) -> dict[str, float]:
    """The last cumulative epsilon each private site reported."""
    private = outcome.last("train", "private")
    epsilons = outcome.last("train", "epsilon")
    return {site.name: epsilons[str(i)] for i, site in enumerate(sites) if private.get(str(i)) == 1.0}
