"""DPConfig validation and the default delta."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from core.privacy import DPConfig, default_delta

ROOT = Path(__file__).resolve().parents[3]


def test_disabled_config_needs_nothing() -> None:
    assert not DPConfig().enabled


@pytest.mark.parametrize("kwargs", [
    {"enabled": True},
    {"enabled": True, "noise_multiplier": 1.0, "target_epsilon": 3.0},
    {"enabled": True, "noise_multiplier": -1.0},
    {"enabled": True, "noise_multiplier": 1.0, "max_grad_norm": 0.0},
    {"enabled": True, "target_epsilon": math.inf},
    {"enabled": True, "noise_multiplier": 1.0, "delta": 1.0},
    {"enabled": True, "noise_multiplier": 1.0, "accountant": "gdp"},
])
def test_bad_settings_raise_one_line(kwargs: dict) -> None:
    with pytest.raises(ValueError) as info:
        DPConfig(**kwargs)
    assert "\n" not in str(info.value)


def test_budget_defaults_to_target_then_to_none() -> None:
    assert DPConfig(enabled=True, target_epsilon=4.0).budget == 4.0
    assert DPConfig(enabled=True, target_epsilon=4.0, max_epsilon=5.0).budget == 5.0
    assert DPConfig(enabled=True, noise_multiplier=1.0, max_epsilon=3.0).budget == 3.0


@pytest.mark.parametrize("size, delta", [(1, 0.1), (40, 1e-3), (100, 1e-3), (1000, 1e-4), (1200, 1e-5), (10000, 1e-5)])
def test_default_delta_is_a_power_of_ten_below_one_over_ten_n(size: int, delta: float) -> None:
    assert default_delta(size) == pytest.approx(delta)
    assert default_delta(size) <= 1.0 / (10 * size)


def test_core_privacy_imports_no_flower() -> None:
    code = "import sys, core.privacy; sys.exit('flwr' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=False).returncode == 0


def test_each_dp_setting_has_one_key_in_the_record_the_node_config_and_site_toml() -> None:
    import re
    from dataclasses import fields

    from core.privacy.config import DP_SCHEMA

    keys = DP_SCHEMA.keys("node")
    assert {f.name for f in fields(DPConfig)} - {"enabled"} == set(keys)
    changed = DPConfig(enabled=True, noise_multiplier=1.5, target_epsilon=None, max_epsilon=7.0, max_grad_norm=2.0,
                       delta=1e-6, accountant="prv", seed=3, interval_noise=4.0)
    node = changed.node_config()
    assert set(node) == set(keys.values()) - {"dp-target-epsilon"}  # every value set is written under its key
    assert DPConfig.from_node_config({**node, "data-path": "/d"}) == changed
    budget = DPConfig(enabled=True, target_epsilon=8.0)
    assert budget.node_config() == {"dp-target-epsilon": 8.0} and DPConfig.from_node_config(budget.node_config()) == budget
    assert DPConfig.from_node_config({"dp-noise-multiplier": "none", "dp-delta": ""}) == DPConfig()
    site_toml = (Path(__file__).resolve().parents[3] / "deploy" / "site.toml").read_text(encoding="utf-8")
    shown = dict(re.findall(r"^# (dp-[a-z-]+) = (.+)$", site_toml, re.M))
    assert set(shown) == set(keys.values()) - {"dp-seed"}  # the secret seed is for experiments, not hospitals
    for name, key in keys.items():
        if key in shown and DP_SCHEMA.default(name) is not None:
            assert DP_SCHEMA[name].convert(shown[key].strip('"')) == DP_SCHEMA.default(name), key
