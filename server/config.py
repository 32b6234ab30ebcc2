"""The run configuration of a federation, built once from Flower's run config.

Each server setting is declared once in `FEDERATION_SCHEMA` (run-config key, type, default, help): the record's
defaults, the reading of `[tool.flwr.app.config]` / `--run-config` and the checkpoint's record (`describe`) all
come from it; `tests/server/test_server_config.py` checks `pyproject.toml` against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from core.data.config import LABEL_UNITS
from core.errors import ConfigError
from core.round_settings import KEYS as ROUND_KEYS
from core.round_settings import RoundSettings
from core.schema import Schema, Setting, to_bool, to_int
from strategies.options import OPTIONS, effective_options, strategy_options

# Round-settings keys not read as such from the run config: the server derives the first three, and
# `proximal-mu` is FedProx's strategy option (its aggregator writes it into the train messages).
DERIVED_ROUND_KEYS = ("pretrained", "pretrained-sha256", "central-dp", "proximal-mu")
RUN_ROUND_KEYS = tuple(key for key in ROUND_KEYS.values() if key not in DERIVED_ROUND_KEYS)
# Settings a resume may change: they do not change the model of the rounds already done.
FREE_ON_RESUME = ("resume", "interval", "interval-from", "num-rounds", "timeout", "fraction-evaluate", "wandb",
                  "device", "central-data", "central-label-unit", "out-dir")


def _path(raw: Any) -> Path:
    return Path(str(raw))


def _optional_path(raw: Any) -> Path | None:
    """A folder, or None for "" (the run config's way of leaving it out)."""
    return None if raw is None or str(raw) == "" else Path(str(raw))


FEDERATION_SCHEMA = Schema(
    Setting("pretrained", _path, None, "checkpoint of the pretrained model the federation starts from", "pretrained"),
    Setting("out_dir", _path, Path("runs/federation"), "where the merged model, its checkpoints and metrics go",
            "out-dir"),
    Setting("strategy", str, "fedavg", "fedavg, fedprox, fedavgm, fedadam, fedmedian or fedtrimmedavg", "strategy"),
    Setting("min_nodes", to_int, 2, "sites to wait for and to sample each round", "min-nodes"),
    Setting("resume", to_bool, False, "continue from the last per-round checkpoint in out-dir", "resume"),
    Setting("central_data", _optional_path, None, "site folder evaluated on the server each round", "central-data"),
    Setting("central_label_unit", str, "months", "unit of central-data's age column", "central-label-unit",
            choices=tuple(LABEL_UNITS)),
    Setting("wandb", to_bool, False, "also log to Weights & Biases", "wandb"),
    Setting("timeout", float, 3600.0, "seconds to wait for the sites' replies", "timeout"),
    Setting("fraction_evaluate", float, 1.0, "share of the sites that evaluate the merged model each round",
            "fraction-evaluate"),
    Setting("device", str, "auto", "where the server evaluates central-data", "device"),
    Setting("central_dp_noise_multiplier", float, 0.0, "client-level DP noise on the server (0 = off)",
            "central-dp-noise-multiplier"),
    Setting("central_dp_clipping_norm", float, 1.0, "L2 bound of each site's update under central DP",
            "central-dp-clipping-norm"),
    Setting("central_dp_max_epsilon", float, 0.0, "stop before the central epsilon passes this (0 = no limit)",
            "central-dp-max-epsilon"),
    Setting("central_dp_delta", float, 1e-5, "delta of the central (epsilon, delta) guarantee", "central-dp-delta"),
    Setting("interval", to_bool, True, "fit the final model's 90 % prediction interval across the sites", "interval"),
    Setting("interval_from", _optional_path, None, "a federation's final model: train no round, only fit its interval "
            "across the sites and write it with the interval to out-dir", "interval-from"),
)
_D = FEDERATION_SCHEMA.default


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
        interval_from: a federation's final model: train no round, only fit its interval across the connected
            sites and write it with the interval to `out_dir` (`server.interval.refit_interval`).
    """

    pretrained: Path
    settings: RoundSettings = RoundSettings()
    out_dir: Path = _D("out_dir")
    strategy: str = _D("strategy")
    strategy_options: dict[str, float] = field(default_factory=dict)
    min_nodes: int = _D("min_nodes")
    resume: bool = _D("resume")
    central_data: Path | None = _D("central_data")
    central_label_unit: str = _D("central_label_unit")
    wandb: bool = _D("wandb")
    timeout: float = _D("timeout")
    fraction_evaluate: float = _D("fraction_evaluate")
    device: str = _D("device")
    central_dp_noise_multiplier: float = _D("central_dp_noise_multiplier")
    central_dp_clipping_norm: float = _D("central_dp_clipping_norm")
    central_dp_max_epsilon: float = _D("central_dp_max_epsilon")
    central_dp_delta: float = _D("central_dp_delta")
    interval: bool = _D("interval")
    interval_from: Path | None = _D("interval_from")

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
        values = {key: str(getattr(self, name)) for name, key in FEDERATION_SCHEMA.keys("run").items()}
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
        own = set(FEDERATION_SCHEMA.keys("run").values())
        unknown = [key for key in run_config if key not in own and key not in RUN_ROUND_KEYS and key not in OPTIONS]
        if unknown:
            raise ConfigError(f"unknown run config key {unknown[0]!r}")
        values = FEDERATION_SCHEMA.read(run_config)
        options = {key: value for key, value in run_config.items() if key in OPTIONS}
        strategy_options(values.get("strategy", cls.strategy), options)  # refuse bad options before anything else
        mine = {key: float(value) for key, value in options.items()
                if OPTIONS[key].strategy == values.get("strategy", cls.strategy)}
        rounds = RoundSettings.from_config({key: value for key, value in run_config.items() if key in RUN_ROUND_KEYS})
        return cls(**values, settings=rounds, strategy_options=mine)
