"""The run configuration of a federation, built once from Flower's run config."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from core.errors import ConfigError
from core.model.freeze import parse_freeze_spec

# Keys the server does not interpret but forwards to every site in the train/evaluate config.
FORWARDED_PREFIXES = ("sim-", "dp-", "device")


@dataclass(frozen=True)
class FederationConfig:
    """Settings of one federated run (`[tool.flwr.app.config]`, overridable with --run-config).

    Attributes:
        pretrained: checkpoint of the pretrained (RSNA) model the federation starts from.
        out_dir: where the merged model, its checkpoints and the metrics go.
        num_rounds: federated rounds.
        strategy: fedavg, fedprox, fedavgm, fedadam, fedmedian or fedtrimmedavg.
        freeze: blocks frozen for everyone ("none", "1", "1-2", "1-3", "1-4").
        local_epochs, lr, batch_size: local training per round.
        proximal_mu: FedProx's mu (0 disables the term).
        local_layers: "none" or "norm" (normalisation layers stay at the sites, FedBN style).
        seed: seed of the run; sites derive their round seeds from it.
        min_nodes: sites to wait for and to sample each round.
        resume: continue from the last per-round checkpoint in `out_dir` after a crash.
        central_data, central_label_unit: optional site folder evaluated on the server each round.
        wandb: also log to Weights & Biases (offline unless WANDB_MODE says otherwise).
        timeout: seconds to wait for the sites' replies.
        central_dp_noise_multiplier: client-level DP on the server (0 = off): Gaussian noise of std
            multiplier * clipping norm / min-nodes on the mean of the clipped site updates.
        central_dp_clipping_norm: L2 bound of each site's update under central DP.
        central_dp_max_epsilon: stop before a round would push the central epsilon past this (0 = no limit).
        central_dp_delta: delta of the central (epsilon, delta) guarantee; keep it well below 1/min-nodes.
        forwarded: site settings passed through to the sites (simulation site list, DP, device).
    """

    pretrained: Path
    out_dir: Path = Path("runs/federation")
    num_rounds: int = 3
    strategy: str = "fedavg"
    freeze: str = "1-3"
    local_epochs: int = 1
    lr: float = 3e-4
    batch_size: int = 32
    proximal_mu: float = 0.0
    local_layers: str = "none"
    seed: int = 0
    min_nodes: int = 2
    resume: bool = False
    central_data: Path | None = None
    central_label_unit: str = "months"
    wandb: bool = False
    timeout: float = 3600.0
    central_dp_noise_multiplier: float = 0.0
    central_dp_clipping_norm: float = 1.0
    central_dp_max_epsilon: float = 0.0
    central_dp_delta: float = 1e-5
    forwarded: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        parse_freeze_spec(self.freeze)
        if self.num_rounds < 1 or self.local_epochs < 1:
            raise ConfigError("num-rounds and local-epochs must be at least 1")
        if self.local_layers not in ("none", "norm"):
            raise ConfigError(f"local-layers must be 'none' or 'norm', got {self.local_layers!r}")
        if self.central_dp_noise_multiplier < 0 or self.central_dp_max_epsilon < 0:
            raise ConfigError("central-dp-noise-multiplier and central-dp-max-epsilon must be >= 0")
        if self.central_dp_clipping_norm <= 0 or not 0 < self.central_dp_delta < 1:
            raise ConfigError("central-dp-clipping-norm must be > 0 and central-dp-delta in (0, 1)")

    @property
    def central_dp(self) -> bool:
        """Whether the server adds client-level DP noise (Flower's fixed-clipping wrapper)."""
        return self.central_dp_noise_multiplier > 0

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> "FederationConfig":
        """Read kebab-case keys (`num-rounds`, `local-epochs`...); unknown keys are refused."""
        if not str(run_config.get("pretrained", "")):
            raise ConfigError("run config has no 'pretrained' checkpoint: pass --run-config \"pretrained='PATH'\"")
        names = {f.name for f in fields(cls)} - {"forwarded"}
        values: dict[str, Any] = {}
        forwarded: dict[str, Any] = {}
        for key, value in run_config.items():
            name = key.replace("-", "_")
            if key.startswith(FORWARDED_PREFIXES):
                forwarded[key] = value
            elif name in names:
                values[name] = value
            else:
                raise ConfigError(f"unknown run config key {key!r}")
        for name in ("pretrained", "out_dir", "central_data"):
            if values.get(name) not in (None, ""):
                values[name] = Path(str(values[name]))
            elif name == "central_data":
                values[name] = None
        for name, kind in (("num_rounds", int), ("local_epochs", int), ("batch_size", int), ("seed", int),
                           ("min_nodes", int), ("lr", float), ("proximal_mu", float), ("timeout", float),
                           ("central_dp_noise_multiplier", float), ("central_dp_clipping_norm", float),
                           ("central_dp_max_epsilon", float), ("central_dp_delta", float)):
            if name in values:
                values[name] = kind(values[name])
        for name in ("resume", "wandb"):
            if name in values:
                values[name] = str(values[name]).lower() in ("1", "true", "yes")
        return cls(**values, forwarded=forwarded)

    def site_config(self) -> dict[str, Any]:
        """What every site receives in its train and evaluate config."""
        return {
            "freeze": self.freeze, "local-epochs": self.local_epochs, "lr": self.lr,
            "batch-size": self.batch_size, "proximal-mu": self.proximal_mu, "local-layers": self.local_layers,
            "seed": self.seed, "num-rounds": self.num_rounds, "pretrained": str(self.pretrained),
            "central-dp": self.central_dp, **self.forwarded,
        }
