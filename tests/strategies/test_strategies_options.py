"""Strategy options: typed, validated, settable by kebab-case key, defaults defined once (the aggregators)."""

from __future__ import annotations

import re

import tomli
from pathlib import Path

import numpy as np
import pytest

from core.errors import ConfigError
from strategies import SiteUpdate, build_aggregator
from strategies.options import OPTIONS, option_table, parse_option_assignments, strategy_options

ROOT = Path(__file__).resolve().parents[2]


def test_options_reach_their_aggregator_and_the_others_keep_their_defaults() -> None:
    assert strategy_options("fedavgm", {"server-momentum": "0.5", "eta": 0.1}) == {"server_momentum": 0.5}
    aggregator = build_aggregator("fedavgm", **strategy_options("fedavgm", {"server-momentum": 0.5}))
    assert aggregator.options() == {"server_learning_rate": 1.0, "server_momentum": 0.5}
    assert build_aggregator("fedtrimmedavg", **strategy_options("fedtrimmedavg", {"trimmed-beta": 0.1})).beta == 0.1


@pytest.mark.parametrize("strategy, values, match", [
    ("fedavg", {"server-momentum": 0.5}, "applies to fedavgm, not fedavg"),
    ("fedavgm", {"momentum": 0.5}, "unknown strategy option 'momentum'"),
    ("fedadam", {"tau": "small"}, "not a number"),
    ("fedadam", {"eta": float("nan")}, "not a finite number"),
    ("fedsgd", {}, "unknown strategy"),
])
def test_bad_options_are_refused_in_one_line(strategy: str, values: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        strategy_options(strategy, values)


def test_ranges_are_checked_by_the_aggregator() -> None:
    with pytest.raises(ConfigError):
        build_aggregator("fedavgm", **strategy_options("fedavgm", {"server-momentum": 1.0}))


def test_command_line_assignments() -> None:
    assert parse_option_assignments(["server-momentum=0.9", "eta=0.01"]) == {"server-momentum": 0.9, "eta": 0.01}
    for bad in ("server-momentum", "=1", "server-momentum=fast", "speed=1"):
        with pytest.raises(ConfigError):
            parse_option_assignments([bad])


def test_fedavgm_uses_momentum_by_default() -> None:
    global_arrays = {"w": np.zeros(2, np.float32)}
    plain, momentum = build_aggregator("fedavg"), build_aggregator("fedavgm")
    for _ in range(2):
        update = [SiteUpdate("0", {"w": global_arrays["w"] + 1.0}, 1)]
        averaged = plain.aggregate(global_arrays, update)
        moved = momentum.aggregate(global_arrays, update)
    assert np.allclose(averaged["w"], 1.0) and np.allclose(moved["w"], 1.9)  # 1 + 0.9 * 1


def test_the_run_config_and_the_docs_carry_the_code_defaults() -> None:
    with open(ROOT / "pyproject.toml", "rb") as handle:
        run_config = tomli.load(handle)["tool"]["flwr"]["app"]["config"]
    for key, spec in OPTIONS.items():
        assert float(run_config[key]) == spec.default, key
    assert option_table() in (ROOT / "docs" / "strategies.md").read_text()


@pytest.mark.parametrize("assignment, message", [
    ("server-momentum", "is not KEY=VALUE"), ("=0.9", "is not KEY=VALUE"), (" =0.9", "is not KEY=VALUE"),
    ("momentum=0.9", "unknown strategy option 'momentum'; options are proximal-mu, server-learning-rate"),
    ("server-momentum=fast", "'fast' is not a number"), ("server-momentum=0.9=1", "'0.9=1' is not a number"),
])
def test_a_bad_strategy_option_assignment_is_named_in_one_line(assignment, message) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_option_assignments([assignment])


def test_the_option_table_has_its_header_and_one_row_per_option() -> None:
    lines = option_table().splitlines()
    assert lines[:2] == ["| key | strategy | default | meaning |", "|---|---|---|---|"] and len(lines) == 2 + len(OPTIONS)
