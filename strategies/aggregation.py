"""Per-key aggregation of partial model updates, in plain numpy (no Flower).

Each site returns a subset of the global arrays (it may freeze deeper than the run). Every key is
aggregated over the updates that contain it; keys no update contains keep their global value. Integer
arrays (BatchNorm `num_batches_tracked`) take the max of their contributors; float arrays go through
the aggregator's rule, computed in float64 and cast back to the global dtype.

Server-optimiser state (`state_dict`) holds only str, int, float, lists and dicts, so it survives
the checkpoint's JSON metadata and `torch.load(weights_only=True)`; arrays are stored as
{"dtype": str, "shape": list[int], "data": base64 str}.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.errors import ConfigError

Arrays = dict[str, np.ndarray]


@dataclass
class SiteUpdate:
    """What one site trained in one round."""

    site: str  # human-readable site id (for logs and reports)
    arrays: Arrays  # keys are a subset of the global keys
    num_examples: int


def validate_update(global_arrays: Arrays, update: SiteUpdate) -> str | None:
    """Return a one-line reason to reject `update`, or None if it can be aggregated."""
    if update.num_examples <= 0:
        return f"num-examples is {update.num_examples}, must be > 0"
    if not update.arrays:
        return "empty update: no arrays returned"
    unknown = [key for key in update.arrays if key not in global_arrays]
    if unknown:
        more = f" (+{len(unknown) - 3} more)" if len(unknown) > 3 else ""
        return f"{len(unknown)} unknown key(s): {', '.join(unknown[:3])}{more}"
    for key, array in update.arrays.items():
        expected = global_arrays[key]
        if array.shape != expected.shape:
            return f"shape mismatch for {key}: got {array.shape}, expected {expected.shape}"
        if array.dtype.kind != expected.dtype.kind:
            return f"dtype mismatch for {key}: got {array.dtype}, expected {expected.dtype}"
        if array.dtype.kind in "fc" and not np.all(np.isfinite(array)):
            return f"non-finite values in {key}"
    return None


def encode_array(array: np.ndarray) -> dict[str, Any]:
    """Plain-type form of an array that survives JSON (checkpoint metadata) and `torch.load(weights_only=True)`."""
    return {"dtype": array.dtype.str, "shape": list(array.shape),
            "data": base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")}


def decode_array(encoded: dict[str, Any]) -> np.ndarray:
    """Inverse of `encode_array` (a writable copy)."""
    flat = np.frombuffer(base64.b64decode(encoded["data"]), dtype=np.dtype(encoded["dtype"]))
    return flat.reshape(encoded["shape"]).copy()


class Aggregator:
    """Base class: the per-key loop, integer handling and state plumbing.

    Subclasses set `name` and implement `_combine`, which turns the float64 values of one key
    (one per contributing site, with their example counts) into the new float64 value.
    """

    name = "base"

    def aggregate(self, global_arrays: Arrays, updates: list[SiteUpdate]) -> Arrays:
        """Return a new global dict: same keys, order and dtypes as `global_arrays`.

        Updates are combined in the order of their site names, not of their arrival, so that the
        floating-point result does not depend on which site answered first.
        """
        updates = sorted(updates, key=lambda u: u.site)
        result: Arrays = {}
        for key, current in global_arrays.items():
            contributors = [u for u in updates if key in u.arrays]
            if not contributors:
                result[key] = current
                continue
            values = [u.arrays[key] for u in contributors]
            if current.dtype.kind in "iub":
                result[key] = np.max(np.stack(values), axis=0).astype(current.dtype)
                continue
            weights = np.array([u.num_examples for u in contributors], dtype=np.float64)
            stacked = np.stack([np.asarray(v, dtype=np.float64) for v in values])
            combined = self._combine(key, np.asarray(current, dtype=np.float64), stacked, weights)
            result[key] = combined.astype(current.dtype)
        return result

    def _combine(self, key: str, current: np.ndarray, values: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """New value of `key` from `values` (sites x shape) and `weights` (sites,)."""
        raise NotImplementedError

    def train_config(self) -> dict[str, float]:
        """Extra entries for the train ConfigRecord (e.g. FedProx's "proximal-mu")."""
        return {}

    def options(self) -> dict[str, float]:
        """The hyperparameters, for logs and reports."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Server-optimiser state as plain types (see the module docstring)."""
        return {"name": self.name}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned; a state from another aggregator is refused."""
        if state.get("name") != self.name:
            raise ConfigError(f"state of aggregator {state.get('name')!r} cannot be loaded into {self.name!r}")


def weighted_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mean over axis 0 weighted by `weights`."""
    return np.tensordot(weights / weights.sum(), values, axes=1)


class FedAvg(Aggregator):
    """Weighted mean by number of examples (McMahan et al., 2017)."""

    name = "fedavg"

    def _combine(self, key: str, current: np.ndarray, values: np.ndarray, weights: np.ndarray) -> np.ndarray:
        return weighted_mean(values, weights)


class FedProx(FedAvg):
    """FedAvg on the server; the proximal term is client-side and `proximal_mu` travels in the config."""

    name = "fedprox"

    def __init__(self, proximal_mu: float = 0.01) -> None:
        if proximal_mu < 0:
            raise ConfigError(f"proximal_mu must be >= 0, got {proximal_mu}")
        self.proximal_mu = proximal_mu

    def train_config(self) -> dict[str, float]:
        return {"proximal-mu": self.proximal_mu}

    def options(self) -> dict[str, float]:
        return {"proximal_mu": self.proximal_mu}


class FedAvgM(Aggregator):
    """Server momentum on the pseudo-gradient `global - mean` (Hsu et al., 2019), SGD convention.

    momentum = server_momentum * momentum + pseudo_gradient; new = global - server_learning_rate * momentum.
    A key's momentum is kept and advanced only in the rounds in which some site trained it.
    """

    name = "fedavgm"

    def __init__(self, server_learning_rate: float = 1.0, server_momentum: float = 0.9) -> None:
        if server_learning_rate <= 0 or not 0 <= server_momentum < 1:
            raise ConfigError("need server_learning_rate > 0 and 0 <= server_momentum < 1")
        self.server_learning_rate = server_learning_rate
        self.server_momentum = server_momentum
        self.momentum: Arrays = {}

    def _combine(self, key: str, current: np.ndarray, values: np.ndarray, weights: np.ndarray) -> np.ndarray:
        pseudo_gradient = current - weighted_mean(values, weights)
        previous = self.momentum.get(key, np.zeros_like(current))
        self.momentum[key] = self.server_momentum * previous + pseudo_gradient
        return current - self.server_learning_rate * self.momentum[key]

    def options(self) -> dict[str, float]:
        return {"server_learning_rate": self.server_learning_rate, "server_momentum": self.server_momentum}

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "momentum": {k: encode_array(v) for k, v in self.momentum.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.momentum = {k: decode_array(v) for k, v in state["momentum"].items()}


class FedAdam(Aggregator):
    """Adam on the pseudo-gradient `mean - global` (Reddi et al., 2021), with m, v and a step count per key.

    new = global + eta * sqrt(1 - beta_2^t) / (1 - beta_1^t) * m / (sqrt(v) + tau), where t is the number
    of rounds in which this key was trained (1 at its first update; Flower uses server_round + 1).
    """

    name = "fedadam"

    def __init__(self, eta: float = 1e-1, beta_1: float = 0.9, beta_2: float = 0.99, tau: float = 1e-3) -> None:
        if eta <= 0 or tau <= 0 or not (0 <= beta_1 < 1 and 0 <= beta_2 < 1):
            raise ConfigError("need eta > 0, tau > 0 and beta_1, beta_2 in [0, 1)")
        self.eta, self.beta_1, self.beta_2, self.tau = eta, beta_1, beta_2, tau
        self.m: Arrays = {}
        self.v: Arrays = {}
        self.step: dict[str, int] = {}

    def _combine(self, key: str, current: np.ndarray, values: np.ndarray, weights: np.ndarray) -> np.ndarray:
        delta = weighted_mean(values, weights) - current
        zeros = np.zeros_like(current)
        self.m[key] = self.beta_1 * self.m.get(key, zeros) + (1 - self.beta_1) * delta
        self.v[key] = self.beta_2 * self.v.get(key, zeros) + (1 - self.beta_2) * delta**2
        step = self.step[key] = self.step.get(key, 0) + 1
        eta_t = self.eta * np.sqrt(1 - self.beta_2**step) / (1 - self.beta_1**step)
        return current + eta_t * self.m[key] / (np.sqrt(self.v[key]) + self.tau)

    def options(self) -> dict[str, float]:
        return {"eta": self.eta, "beta_1": self.beta_1, "beta_2": self.beta_2, "tau": self.tau}

    def state_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "m": {k: encode_array(v) for k, v in self.m.items()},
            "v": {k: encode_array(v) for k, v in self.v.items()},
            "step": dict(self.step),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.m = {k: decode_array(v) for k, v in state["m"].items()}
        self.v = {k: decode_array(v) for k, v in state["v"].items()}
        self.step = {k: int(v) for k, v in state["step"].items()}


class FedMedian(Aggregator):
    """Coordinate-wise median over the contributing sites, unweighted (Yin et al., 2018)."""

    name = "fedmedian"

    def _combine(self, key: str, current: np.ndarray, values: np.ndarray, weights: np.ndarray) -> np.ndarray:
        return np.median(values, axis=0)


class FedTrimmedAvg(Aggregator):
    """Coordinate-wise mean after cutting int(beta * n) values at each end, unweighted (Yin et al., 2018).

    With few contributors nothing is cut: beta = 0.2 trims only once a key has 5 or more sites.
    """

    name = "fedtrimmedavg"

    def __init__(self, beta: float = 0.2) -> None:
        if not 0 <= beta < 0.5:
            raise ConfigError(f"beta must be in [0, 0.5), got {beta}")
        self.beta = beta

    def _combine(self, key: str, current: np.ndarray, values: np.ndarray, weights: np.ndarray) -> np.ndarray:
        cut = int(self.beta * len(values))
        return np.sort(values, axis=0)[cut : len(values) - cut].mean(axis=0)

    def options(self) -> dict[str, float]:
        return {"beta": self.beta}


AGGREGATORS: dict[str, type[Aggregator]] = {
    cls.name: cls for cls in (FedAvg, FedProx, FedAvgM, FedAdam, FedMedian, FedTrimmedAvg)
}


def build_aggregator(name: str, **options: float) -> Aggregator:
    """Instantiate the aggregator called `name` with its keyword `options`."""
    if name not in AGGREGATORS:
        raise ConfigError(f"unknown strategy {name!r}; choose one of {', '.join(AGGREGATORS)}")
    return AGGREGATORS[name](**options)
