"""One schema per setting: it generates the flags, reads and writes run and node configs, and holds the
defaults that pyproject.toml's run config and deploy/site.toml must repeat."""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

import pytest

from core.cli import add_data_arguments, data_config_from_args
from core.data import SiteDataConfig
from core.data.config import LAYOUT_SCHEMA
from core.errors import ConfigError
from core.round_settings import ROUND_SCHEMA, RoundSettings
from core.schema import Schema, Setting, to_bool, to_int

ROOT = Path(__file__).resolve().parents[2]


def _run_config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["flwr"]["app"]["config"]


def test_pyproject_run_config_carries_the_schema_defaults() -> None:
    # `proximal-mu` in the run config is FedProx's strategy option (tests/strategies checks its default); the
    # server derives pretrained-sha256 and central-dp; every other round setting is in the run config
    run_config = {k: v for k, v in _run_config().items() if k != "proximal-mu"}
    shipped = {name: key for name, key in ROUND_SCHEMA.keys("run").items() if key in run_config}
    assert set(ROUND_SCHEMA.keys("run")) - set(shipped) == {"pretrained_sha256", "uniform_weights", "proximal_mu"}
    for name, key in shipped.items():
        if name == "pretrained":
            continue  # the operator gives it; "" in the shipped file
        setting = ROUND_SCHEMA[name]
        assert setting.convert(run_config[key]) == setting.default, key
    assert RoundSettings(**ROUND_SCHEMA.read({k: v for k, v in run_config.items() if k != "pretrained"})) == \
        RoundSettings()


def test_the_record_takes_its_defaults_from_the_schema() -> None:
    defaults = RoundSettings()
    assert {name: getattr(defaults, name) for name in ROUND_SCHEMA.settings} == {
        name: s.default for name, s in ROUND_SCHEMA.settings.items()}
    layout = SiteDataConfig(Path("x"))
    assert {name: getattr(layout, name) for name in LAYOUT_SCHEMA.settings} == {
        name: s.default for name, s in LAYOUT_SCHEMA.settings.items()}


def test_the_site_layout_is_declared_once_for_flags_and_node_configs(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_data_arguments(parser)
    flags = {o for a in parser._actions for o in a.option_strings} - {"-h", "--help", "--data"}
    assert flags == {f"--{key}" for key in LAYOUT_SCHEMA.keys("node").values()}  # same names on both sides
    declared = ["--data", str(tmp_path), "--csv", "scan.csv", "--image-dir", "png", "--id-column", "image",
                "--age-column", "age", "--sex-column", "sex", "--label-unit", "years"]
    data = data_config_from_args(parser.parse_args(declared))
    assert data == SiteDataConfig(tmp_path, "scan.csv", "png", "image", "age", "sex", "years")
    assert data.node_config() == {"csv": "scan.csv", "image-dir": "png", "id-column": "image", "age-column": "age",
                                  "sex-column": "sex", "label-unit": "years"}
    assert SiteDataConfig.from_node_config(tmp_path, data.node_config()) == data
    assert SiteDataConfig.from_node_config(tmp_path, {}) == SiteDataConfig(tmp_path)
    site_toml = (ROOT / "deploy" / "site.toml").read_text(encoding="utf-8")
    for key, default in ((k, LAYOUT_SCHEMA.default(n)) for n, k in LAYOUT_SCHEMA.keys("node").items()):
        assert f'{key} = "{default}"' in site_toml, key  # the shipped template shows the defaults


def test_a_bad_value_is_a_one_line_error_naming_its_key() -> None:
    with pytest.raises(ConfigError, match="label-unit must be one of months, years"):
        SiteDataConfig.from_node_config(Path("x"), {"label-unit": "weeks"})
    with pytest.raises(ConfigError, match=r"batch-size = 2.5 is not a valid value"):
        ROUND_SCHEMA.read({"batch-size": 2.5})
    parser = argparse.ArgumentParser()
    ROUND_SCHEMA.add_arguments(parser, ["num_rounds"])
    assert parser.parse_args(["--rounds", "4.0"]).num_rounds == 4 and parser.parse_args([]).num_rounds == 3
    with pytest.raises(SystemExit):
        parser.parse_args(["--rounds", "many"])


def test_schema_conversions() -> None:
    assert to_bool("Yes") is True and to_bool(0) is False and to_int(3.0) == 3
    for bad in ("maybe", 2):
        with pytest.raises(ValueError):
            to_bool(bad)
    with pytest.raises(ValueError):
        to_int(True)
    schema = Schema(Setting("n", to_int, 1, "a count", "n-things", node_key="n"))
    assert schema.write({"n": 2}) == {"n-things": 2} and schema.write({"n": 2}, "node") == {"n": 2}
    assert schema.read({"n-things": "5", "other": 1}) == {"n": 5} and schema.read({}, "node") == {}


def test_sim_round_flags_come_from_the_schema(tmp_path: Path, monkeypatch) -> None:
    import sim.run
    from sim.__main__ import main

    seen = []
    monkeypatch.setattr(sim.run, "run_experiment", seen.append)
    assert main(["--rounds", "2", "--local-epochs", "3", "--batch-size", "4", "--lr", "0.01", "--out",
                 str(tmp_path)]) == 0
    assert (seen[0].rounds, seen[0].local_epochs, seen[0].batch_size, seen[0].lr) == (2, 3, 4, 0.01)
    assert main(["--out", str(tmp_path)]) == 0 and seen[1].rounds == 4  # not given: the preset's
