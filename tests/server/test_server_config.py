"""The run config: round settings, strategy options and server settings from one flat kebab-case mapping."""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path

import pytest
import tomli

from core.errors import ConfigError
from core.round_settings import RoundSettings
from server.config import FEDERATION_SCHEMA, RUN_ROUND_KEYS, FederationConfig
from strategies.options import OPTIONS

ROOT = Path(__file__).resolve().parents[2]


def _pyproject_run_config() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as handle:
        return tomli.load(handle)["tool"]["flwr"]["app"]["config"]


def test_the_shipped_run_config_matches_the_code_defaults() -> None:
    config = FederationConfig.from_run_config({**_pyproject_run_config(), "pretrained": "model.pt"})
    assert config.settings == RoundSettings()  # one set of defaults: the record's
    assert config == FederationConfig(pretrained=Path("model.pt"))


def test_strategy_options_reach_the_aggregator_and_are_recorded() -> None:
    run_config = {**_pyproject_run_config(), "pretrained": "model.pt", "strategy": "fedavgm", "server-momentum": 0.5,
                  "lr": 0.001, "freeze": "1-2"}
    config = FederationConfig.from_run_config(run_config)
    assert config.aggregator_options() == {"server_momentum": 0.5, "server_learning_rate": 1.0}
    assert config.settings.lr == 0.001 and config.settings.freeze == (1, 2)
    recorded = config.describe()
    assert recorded["server-momentum"] == "0.5" and recorded["server-learning-rate"] == "1.0"
    assert recorded["strategy"] == "fedavgm" and recorded["freeze"] == "1-2"


@pytest.mark.parametrize("change, match", [
    ({"server-momentum": 0.5}, "server-momentum applies to fedavgm, not fedavg"),
    ({"sim-site-paths": "a;b"}, "unknown run config key 'sim-site-paths'"),
    ({"dp-noise-multiplier": 1.0}, "unknown run config key 'dp-noise-multiplier'"),
    ({"pretrained": ""}, "no 'pretrained' checkpoint"),
    ({"lr": "fast"}, "lr"),
    ({"strategy": "fedavgm", "server-momentum": 1.5}, "server_momentum"),
    ({"fraction-evaluate": 1.5}, "fraction-evaluate must be between 0 and 1, got 1.5"),
])
def test_bad_run_configs_are_one_line_errors(change: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        FederationConfig.from_run_config({**_pyproject_run_config(), "pretrained": "model.pt", **change})


def test_a_resume_may_change_rounds_and_timeout_but_nothing_that_shapes_the_model() -> None:
    before = FederationConfig(pretrained=Path("m.pt"), strategy="fedadam").describe()
    longer = FederationConfig(pretrained=Path("m.pt"), strategy="fedadam", settings=RoundSettings(num_rounds=9),
                              timeout=10.0, fraction_evaluate=0.0)
    assert longer.resume_differences(before) == []
    other = FederationConfig(pretrained=Path("m.pt"), strategy="fedadam", strategy_options={"eta": 0.01},
                             settings=RoundSettings(freeze=()))
    assert other.resume_differences(before) == ["freeze: 1-3 -> none", "eta: 0.1 -> 0.01"]


# one value other than the default for every server setting (a new setting must be added here)
CHANGED = {"pretrained": "m.pt", "out-dir": "out", "strategy": "fedavgm", "min-nodes": 3, "resume": True,
           "central-data": "central", "central-label-unit": "years", "wandb": True, "timeout": 10.0,
           "fraction-evaluate": 0.5, "device": "cpu", "central-dp-noise-multiplier": 0.5,
           "central-dp-clipping-norm": 2.0, "central-dp-max-epsilon": 5.0, "central-dp-delta": 1e-6,
           "interval": False, "interval-from": "runs/fed/federated_final.pt"}


def test_each_server_setting_has_one_key_in_the_toml_the_record_and_the_checkpoint() -> None:
    own = FEDERATION_SCHEMA.keys("run")
    assert set(_pyproject_run_config()) == set(own.values()) | set(RUN_ROUND_KEYS) | set(OPTIONS)
    assert {f.name for f in fields(FederationConfig)} - {"settings", "strategy_options"} == set(own)
    assert set(CHANGED) == set(own.values())
    config = FederationConfig.from_run_config({**_pyproject_run_config(), **CHANGED})
    recorded = config.describe()
    for name, key in own.items():
        value = FEDERATION_SCHEMA[name].convert(CHANGED[key])
        assert value != FEDERATION_SCHEMA.default(name), key
        assert getattr(config, name) == value and recorded[key] == str(value), key
    read_back = {k: v for k, v in recorded.items() if k in own.values() or k in RUN_ROUND_KEYS}
    assert FederationConfig.from_run_config(read_back) == replace(config, strategy_options={})  # options: defaults
    assert config.resume_differences(recorded) == []


@pytest.mark.parametrize("key, raw", [("min-nodes", 2.5), ("resume", "maybe"), ("central-label-unit", "weeks"),
                                      ("timeout", "soon")])
def test_a_bad_server_setting_is_one_line_naming_its_key(key: str, raw: object) -> None:
    with pytest.raises(ConfigError, match=key) as info:
        FederationConfig.from_run_config({**_pyproject_run_config(), "pretrained": "m.pt", key: raw})
    assert "\n" not in str(info.value)
