"""Per-site settings of sample-level differential privacy (DP-SGD with Opacus).

Each setting is declared once in `DP_SCHEMA` (its `dp-*` node-config key, type, default and help): the record's
defaults, the reading of a site's node config (`DPConfig.from_node_config`) and the node configs the simulation
writes (`DPConfig.node_config`) come from it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from core.errors import ConfigError
from core.schema import Schema, Setting, to_int

ACCOUNTANTS = ("rdp", "prv")
_UNSET = ("", "none")  # a node config value that leaves a setting at its default


def _number(raw: Any) -> float:
    if isinstance(raw, bool):
        raise ValueError("expected a number")
    try:
        return float(raw)
    except (TypeError, ValueError):
        raise ValueError("expected a number") from None


DP_SCHEMA = Schema(
    Setting("noise_multiplier", _number, None, "DP-SGD noise std over the clipping norm (or give a target epsilon)",
            node_key="dp-noise-multiplier"),
    Setting("target_epsilon", _number, None, "the site's whole budget; the noise is chosen to end the run at it",
            node_key="dp-target-epsilon"),
    Setting("max_epsilon", _number, None, "hard budget the ledger enforces before every round",
            node_key="dp-max-epsilon"),
    Setting("max_grad_norm", _number, 1.0, "per-sample clipping norm", node_key="dp-max-grad-norm"),
    Setting("delta", _number, None, "delta of (epsilon, delta) (default: from the first round's images)",
            node_key="dp-delta"),
    Setting("accountant", str, "rdp", "rdp (Renyi DP) or prv (privacy random variables)", node_key="dp-accountant",
            choices=ACCOUNTANTS),
    Setting("seed", to_int, None, "SECRET seed of sampling and noise, for reproducible experiments only",
            node_key="dp-seed"),
    Setting("interval_noise", _number, 5.0, "noise std on the score counts released for the prediction interval",
            node_key="dp-interval-noise"),
)
_D = DP_SCHEMA.default


@dataclass(frozen=True)
class DPConfig:
    """How one site trains privately.

    Attributes:
        enabled: train with DP-SGD; everything else is ignored when False.
        noise_multiplier: sigma, the Gaussian noise std over the clipping norm (give this ...).
        target_epsilon: ... or the site's whole budget: sigma is chosen so that `planned_rounds`
            rounds of the first round's size end at this epsilon, then kept for the site.
        max_epsilon: hard budget the ledger enforces before every round (default: target_epsilon;
            required with a noise multiplier: private training never runs without a budget).
        max_grad_norm: per-sample clipping norm C.
        delta: the delta of (epsilon, delta); None picks `default_delta(N)` on the first private
            round and keeps it for the site.
        accountant: "rdp" (Renyi DP, the default) or "prv" (privacy random variables, tighter).
        seed: the site's SECRET seed of Poisson sampling and noise, for reproducible experiments;
            None (production) draws fresh entropy each round. Whoever knows it can remove the noise.
        interval_noise: standard deviation of the Gaussian noise on every score count the site releases for a
            federated prediction interval (`core.intervals.federated_conformal`), accounted in the ledger.
    """

    enabled: bool = False
    noise_multiplier: float | None = _D("noise_multiplier")
    target_epsilon: float | None = _D("target_epsilon")
    max_epsilon: float | None = _D("max_epsilon")
    max_grad_norm: float = _D("max_grad_norm")
    delta: float | None = _D("delta")
    accountant: str = _D("accountant")
    seed: int | None = _D("seed")
    interval_noise: float = _D("interval_noise")

    def __post_init__(self) -> None:
        if self.accountant not in ACCOUNTANTS:
            raise ConfigError(f"dp accountant must be one of {ACCOUNTANTS}, got {self.accountant!r}")
        _check_positive("max-grad-norm", self.max_grad_norm)
        _check_positive("interval-noise", self.interval_noise)
        for name, value in (("noise-multiplier", self.noise_multiplier), ("target-epsilon", self.target_epsilon),
                            ("max-epsilon", self.max_epsilon)):
            if value is not None:
                _check_positive(name, value)
        if self.delta is not None and not 0.0 < self.delta < 1.0:
            raise ConfigError(f"dp delta must be in (0, 1), got {self.delta}")
        if self.enabled and (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ConfigError("dp needs exactly one of noise-multiplier and target-epsilon")
        if self.enabled and self.target_epsilon is None and self.max_epsilon is None:
            raise ConfigError("dp with a noise multiplier needs a budget (dp-max-epsilon): without one the site "
                              "would train on until epsilon means nothing")

    @classmethod
    def from_node_config(cls, node: Mapping[str, Any]) -> "DPConfig":
        """The `dp-*` keys of a site's node config ("" or "none": the default); private when a noise multiplier or
        a target epsilon is given. A bad value is a one-line ConfigError naming its key."""
        given = {key: value for key, value in node.items() if str(value).strip().lower() not in _UNSET}
        values = DP_SCHEMA.read(given, "node")
        return cls(enabled="noise_multiplier" in values or "target_epsilon" in values, **values)

    def node_config(self) -> dict[str, Any]:
        """The `dp-*` node config keys that give this config (those whose value is not the default)."""
        return DP_SCHEMA.write({name: value for name, value in asdict(self).items()
                                if name in DP_SCHEMA.settings and value != DP_SCHEMA.default(name)}, "node")

    @property
    def budget(self) -> float:
        """The epsilon the site may not exceed (inf when none is set)."""
        limit = self.max_epsilon if self.max_epsilon is not None else self.target_epsilon
        return math.inf if limit is None else limit


def default_delta(num_examples: int) -> float:
    """The largest power of ten not above 1/(10 N): 1e-4 for N = 1000, 1e-5 for N = 5000.

    Delta is the chance that the epsilon guarantee fails outright; it must be well below 1/N,
    or a mechanism that publishes one random patient's record would qualify.
    """
    if num_examples < 1:
        raise ConfigError("the default delta needs at least one training example")
    return 10.0 ** math.floor(math.log10(1.0 / (10.0 * num_examples)))


def _check_positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"dp {name} must be a positive number, got {value}")
