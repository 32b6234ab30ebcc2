"""The run configuration of a federation, built once from Flower's run config."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from core.errors import ConfigError
from core.round_settings import KEYS as ROUND_KEYS
from core.round_settings import RoundSettings
from strategies.options import OPTIONS, effective_options, strategy_options

# Round-settings keys not read as such from the run config: the server derives the first three, and
# `proximal-mu` is FedProx's strategy option (its aggregator writes it into the train messages).
DERIVED_ROUND_KEYS = ("pretrained", "pretrained-sha256", "central-dp", "proximal-mu")
RUN_ROUND_KEYS = tuple(key for key in ROUND_KEYS.values() if key not in DERIVED_ROUND_KEYS)
# Settings a resume may change: they do not change the model of the rounds already done.
FREE_ON_RESUME = ("resume", "interval", "num-rounds", "timeout", "fraction-evaluate", "wandb", "device", "central-data",
                  "central-label-unit", "out-dir")


@dataclass(frozen=True)
class FederationConfig:
    """Settings of one federated run (`[tool.flwr.app.config]`, overridable with --run-config).

    Attributes:
        pretrained: checkpoint of the pretrained (RSNA) model the federation starts from.
        settings: how the sites train each round (`num-rounds`, `freeze`, `local-epochs`, `lr`, `batch-size`,
            `weight-decay`, `seed`, `local-layers`; see `core.round_settings.RoundSettings`).
        out_dir: where the merged model, its checkpoints and the metrics go.
        strategy: fedavg, fedprox, fedavgm, fedadam, fedmedian or fedtrimmedavg.
        strategy_options: options of the chosen strategy by kebab-case key (`server-momentum`, ...; see
            `strategies.options`); an option left out takes the aggregator's default.
        min_nodes: sites to wait for and to sample each round.
        resume: continue from the last per-round checkpoint in `out_dir` after a crash.
        central_data, central_label_unit: optional site folder evaluated on the server each round.
        wandb: also log to Weights & Biases (offline unless WANDB_MODE says otherwise).
        timeout: seconds to wait for the sites' replies.
        fraction_evaluate: share of the sites asked to evaluate the merged model each round (Flower's FedAvg
            sampling, at least `min_nodes` sites); 0 = none (the server's central evaluation still runs).
        device: where the server evaluates the central set ("auto": a CUDA GPU when present).
        central_dp_noise_multiplier: client-level DP on the server (0 = off): Gaussian noise of std
            multiplier * clipping norm / min-nodes on the mean of the clipped site updates.
        central_dp_clipping_norm: L2 bound of each site's update under central DP.
        central_dp_max_epsilon: stop before a round would push the central epsilon past this (0 = no limit).
        central_dp_delta: delta of the central (epsilon, delta) guarantee; keep it well below 1/min-nodes.
        interval: after the last round, fit the final model's 90 % prediction interval across the sites from
            their score counts (`server.interval`); false: the final model has none.
    """

    pretrained: Path
    settings: RoundSettings = RoundSettings()
    out_dir: Path = Path("runs/federation")
    strategy: str = "fedavg"
    strategy_options: dict[str, float] = field(default_factory=dict)
    min_nodes: int = 2
    resume: bool = False
    central_data: Path | None = None
    central_label_unit: str = "months"
    wandb: bool = False
    timeout: float = 3600.0
    fraction_evaluate: float = 1.0
    device: str = "auto"
    central_dp_noise_multiplier: float = 0.0
    central_dp_clipping_norm: float = 1.0
    central_dp_max_epsilon: float = 0.0
    central_dp_delta: float = 1e-5
    interval: bool = True

    def __post_init__(self) -> None:
        self.aggregator_options()
        if self.min_nodes < 1:
            raise ConfigError("min-nodes must be at least 1")
        if not 0 <= self.fraction_evaluate <= 1:
            raise ConfigError(f"fraction-evaluate must be between 0 and 1, got {self.fraction_evaluate}")
        if self.central_dp_noise_multiplier < 0 or self.central_dp_max_epsilon < 0:
            raise ConfigError("central-dp-noise-multiplier and central-dp-max-epsilon must be >= 0")
        if self.central_dp_clipping_norm <= 0 or not 0 < self.central_dp_delta < 1:
            raise ConfigError("central-dp-clipping-norm must be > 0 and central-dp-delta in (0, 1)")

    @property
    def num_rounds(self) -> int:
        return self.settings.num_rounds

    @property
    def freeze(self) -> str:
        """The run's freeze spec ("1-3", "none")."""
        return self.settings.freeze_spec

    @property
    def central_dp(self) -> bool:
        """Whether the server adds client-level DP noise (Flower's fixed-clipping wrapper)."""
        return self.central_dp_noise_multiplier > 0

    def aggregator_options(self) -> dict[str, float]:
        """The aggregator's constructor arguments (validated; defaults are the aggregator's own)."""
        return strategy_options(self.strategy, self.strategy_options)

    def message_settings(self, pretrained_sha256: str) -> RoundSettings:
        """The round settings the server writes into every message."""
        return replace(self.settings, pretrained=str(self.pretrained), pretrained_sha256=pretrained_sha256,
                       uniform_weights=self.central_dp)

    def describe(self) -> dict[str, str]:
        """Every setting as a string under its run config key (for checkpoints, W&B and the resume check).

        The strategy options are the aggregator's effective values, defaults included.
        """
        values = {k.replace("_", "-"): str(v) for k, v in asdict(self).items()
                  if k not in ("settings", "strategy_options")}
        values.update({k: str(v) for k, v in self.settings.to_config().items() if k in RUN_ROUND_KEYS})
        values.update({k: str(v) for k, v in effective_options(self.strategy, self.strategy_options).items()})
        return values

    def resume_differences(self, recorded: Mapping[str, str]) -> list[str]:
        """`key: recorded -> now` for the settings that change the model and differ from a checkpoint's."""
        now = self.describe()
        return [f"{key}: {recorded[key]} -> {now[key]}" for key in now
                if key not in FREE_ON_RESUME and key in recorded and recorded[key] != now[key]]

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> "FederationConfig":
        """Read kebab-case keys (`num-rounds`, `local-epochs`, `server-momentum`...); unknown keys are refused."""
        if not str(run_config.get("pretrained", "")):
            raise ConfigError("run config has no 'pretrained' checkpoint: pass --run-config \"pretrained='PATH'\"")
        own = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        round_values: dict[str, Any] = {}
        options: dict[str, Any] = {}
        for key, value in run_config.items():
            name = key.replace("-", "_")
            if key in RUN_ROUND_KEYS:
                round_values[key] = value
            elif key in OPTIONS:
                options[key] = value
            elif name in own and name not in ("settings", "strategy_options"):
                values[name] = value
            else:
                raise ConfigError(f"unknown run config key {key!r}")
        for name in ("pretrained", "out_dir", "central_data"):
            if values.get(name) not in (None, ""):
                values[name] = Path(str(values[name]))
            elif name == "central_data":
                values[name] = None
        for name, kind in (("min_nodes", int), ("timeout", float), ("fraction_evaluate", float),
                           ("central_dp_noise_multiplier", float),
                           ("central_dp_clipping_norm", float), ("central_dp_max_epsilon", float),
                           ("central_dp_delta", float)):
            if name in values:
                try:
                    values[name] = kind(values[name])
                except (TypeError, ValueError):
                    raise ConfigError(f"{name.replace('_', '-')} = {values[name]!r} is not a number") from None
        for name in ("resume", "wandb", "interval"):
            if name in values:
                values[name] = str(values[name]).lower() in ("1", "true", "yes")
        strategy = str(values.get("strategy", cls.strategy))
        strategy_options(strategy, options)  # refuse bad options before anything else
        mine = {key: float(value) for key, value in options.items() if OPTIONS[key].strategy == strategy}
        return cls(**values, settings=RoundSettings.from_config(round_values), strategy_options=mine)
