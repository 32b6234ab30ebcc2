"""Per-site settings of sample-level differential privacy (DP-SGD with Opacus)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from core.errors import ConfigError

ACCOUNTANTS = ("rdp", "prv")


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
            federated prediction interval (`core.federated_conformal`), accounted in the ledger.
    """

    enabled: bool = False
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    max_epsilon: float | None = None
    max_grad_norm: float = 1.0
    delta: float | None = None
    accountant: str = "rdp"
    seed: int | None = None
    interval_noise: float = 5.0

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
