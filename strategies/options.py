"""Strategy options: the typed, validated, documented hyperparameters of each aggregator.

They are set with kebab-case keys, in the run config (`flwr run . --run-config "server-momentum=0.9"`)
or with `python -m sim --strategy-option server-momentum=0.9` (repeatable). The defaults live in
one place, the aggregator classes of `strategies.aggregation`; an option the chosen strategy does
not use is refused when it differs from its default (the run config always carries every key).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.errors import ConfigError
from strategies.aggregation import AGGREGATORS, Aggregator


@dataclass(frozen=True)
class OptionSpec:
    """One option: its key, the strategy that uses it, the constructor argument and what it means."""

    key: str
    strategy: str
    argument: str
    help: str

    @property
    def default(self) -> float:
        """The aggregator's own default."""
        return float(inspect.signature(AGGREGATORS[self.strategy].__init__).parameters[self.argument].default)


OPTIONS: dict[str, OptionSpec] = {spec.key: spec for spec in (
    OptionSpec("proximal-mu", "fedprox", "proximal_mu",
               "weight of the proximal term the sites add: mu/2 * squared distance to the global weights"),
    OptionSpec("server-learning-rate", "fedavgm", "server_learning_rate", "step size of the server update"),
    OptionSpec("server-momentum", "fedavgm", "server_momentum", "momentum of the server update, in [0, 1)"),
    OptionSpec("eta", "fedadam", "eta", "server learning rate of Adam"),
    OptionSpec("beta-1", "fedadam", "beta_1", "Adam's first-moment decay, in [0, 1)"),
    OptionSpec("beta-2", "fedadam", "beta_2", "Adam's second-moment decay, in [0, 1)"),
    OptionSpec("tau", "fedadam", "tau", "Adam's adaptivity (added to sqrt(v)), > 0"),
    OptionSpec("trimmed-beta", "fedtrimmedavg", "beta", "fraction cut at each end per coordinate, in [0, 0.5)"),
)}


def strategy_options(strategy: str, values: Mapping[str, Any]) -> dict[str, float]:
    """The constructor arguments of `strategy`'s aggregator from kebab-case `values`.

    Unknown keys, non-numbers, options of another strategy that differ from their default and values
    out of the aggregator's range are refused with a one-line reason.
    """
    if strategy not in AGGREGATORS:
        raise ConfigError(f"unknown strategy {strategy!r}; choose one of {', '.join(AGGREGATORS)}")
    chosen: dict[str, float] = {}
    for key, raw in values.items():
        spec = OPTIONS.get(key)
        if spec is None:
            raise ConfigError(f"unknown strategy option {key!r}; options are {', '.join(OPTIONS)}")
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"strategy option {key} = {raw!r} is not a number") from None
        if not math.isfinite(value):
            raise ConfigError(f"strategy option {key} = {raw!r} is not a finite number")
        if spec.strategy == strategy:
            chosen[spec.argument] = value
        elif value != spec.default:
            raise ConfigError(f"strategy option {key} applies to {spec.strategy}, not {strategy}")
    AGGREGATORS[strategy](**chosen)  # the aggregator checks the ranges
    return chosen


def effective_options(strategy: str, values: Mapping[str, Any]) -> dict[str, float]:
    """Every option `strategy` reads, by kebab-case key, with its default where `values` leaves it out."""
    chosen = strategy_options(strategy, values)
    return {key: chosen.get(spec.argument, spec.default) for key, spec in OPTIONS.items() if spec.strategy == strategy}


def applied_options(aggregator: Aggregator) -> dict[str, float]:
    """Every option of the aggregator that was built, by kebab-case key, read from the aggregator itself."""
    own = aggregator.options()
    return {key: float(own[spec.argument]) for key, spec in OPTIONS.items() if spec.strategy == aggregator.name}


def format_options(options: Mapping[str, float]) -> str:
    """`server-momentum=0.9 server-learning-rate=1` (for results.csv and reports)."""
    return " ".join(f"{key}={value:g}" for key, value in options.items())


def parse_option_assignments(assignments: list[str]) -> dict[str, float]:
    """`["server-momentum=0.9", ...]` (from `--strategy-option`) -> {"server-momentum": 0.9}."""
    values: dict[str, float] = {}
    for text in assignments:
        key, sep, raw = text.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--strategy-option {text!r} is not KEY=VALUE (e.g. server-momentum=0.9)")
        key = key.strip()
        if key not in OPTIONS:
            raise ConfigError(f"unknown strategy option {key!r}; options are {', '.join(OPTIONS)}")
        try:
            values[key] = float(raw)
        except ValueError:
            raise ConfigError(f"--strategy-option {text!r}: {raw!r} is not a number") from None
    return values


def option_table() -> str:
    """A markdown table of the options with their defaults (for the docs and `--help`)."""
    rows = ["| key | strategy | default | meaning |", "|---|---|---|---|"]
    rows += [f"| `{s.key}` | {s.strategy} | {s.default:g} | {s.help} |" for s in OPTIONS.values()]
    return "\n".join(rows)
