"""Each setting of `python -m sim` is declared once in `SIM_SCHEMA`: one field of `SimConfig` with the schema's
default, one flag, one experiment-file key (where it has one). Each case below reaches the run's `SimConfig`
through both forms, so a key dropped or renamed in one form but not the other fails here."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest

import sim.run
from core.data import SiteDataConfig
from core.data.config import LAYOUT_SCHEMA
from sim.__main__ import SIM_FLAGS, build_parser, main
from sim.config import EXPERIMENT_KEYS, SIM_SCHEMA, RealSite, SimConfig, load_experiment, preset

HERE = Path("exp")  # the experiment file's folder: its relative paths are relative to it
# setting: (its experiment-file entry or None (command line only), the value it gives, argv, the value it gives);
# the keys and flags are written out here, so renaming one in a single form fails a test
CASES = {
    "rounds": ({"rounds": 2}, 2, ["--rounds", "2"], 2),
    "local_epochs": ({"local_epochs": 3}, 3, ["--local-epochs", "3"], 3),
    "lr": ({"lr": 0.01}, 0.01, ["--lr", "0.01"], 0.01),
    "batch_size": ({"batch_size": 4}, 4, ["--batch-size", "4"], 4),
    "seed": ({"seed": 5}, 5, ["--seed", "5"], 5),
    "seeds": ({"seeds": 2}, 2, ["--seeds", "2"], 2),
    "strategy": ({"strategy": "fedavgm"}, "fedavgm", ["--strategy", "fedavgm"], "fedavgm"),
    "strategy_options": ({"strategy_options": {"server-momentum": 0.9}}, (("server-momentum", 0.9),),
                         ["--strategy-option", "server-momentum=0.9"], (("server-momentum", 0.9),)),
    "freeze_specs": ({"freeze": ["1,2,3", "none"]}, ("1-3", "none"), ["--freeze", "1-3", "--freeze", "none"],
                     ("1-3", "none")),
    "site_sizes": ({"site_sizes": [20, 10]}, (10, 20), ["--site-sizes", "20,10"], (10, 20)),
    "dp_noise_multipliers": ({"dp_noise_multipliers": [1.5, 0.8]}, (1.5, 0.8), ["--dp", "1.5,0.8"], (1.5, 0.8)),
    "dp_max_epsilon": ({"dp_max_epsilon": 6.0}, 6.0, ["--dp-max-epsilon", "6"], 6.0),
    "feature_cache": ({"feature_cache": False}, False, ["--no-feature-cache"], False),
    "feature_augment": ({"feature_augment": "features"}, "features", ["--feature-augment", "features"], "features"),
    "fedrep": ({"fedrep": True}, True, ["--fedrep"], True),
    "leave_one_out": ({"leave_one_out": True}, True, ["--leave-one-out"], True),
    "wandb": (None, None, ["--wandb"], True),
    "pretrained": ({"pretrained": "m.pt"}, HERE / "m.pt", ["--pretrained", "m.pt"], Path("m.pt")),
    "source_dir": ({"source": "src"}, HERE / "src", ["--source", "src"], Path("src")),
    "real_sites": (None, None, ["--site", "a", "--site", "b:years"],
                   (RealSite(Path("a")), RealSite(Path("b"), "years"))),
    "out_dir": (None, None, ["--out", "o"], Path("o")),
    "cache_dir": (None, None, ["--cache", "c"], Path("c")),
}


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def test_every_setting_has_a_case_a_field_with_its_default_and_a_flag() -> None:
    assert set(CASES) == set(SIM_SCHEMA.settings)
    default = SimConfig()
    assert {name: getattr(default, name) for name in SIM_SCHEMA.settings} == {
        name: s.default for name, s in SIM_SCHEMA.settings.items()}  # the default preset's values, declared once
    assert set(SIM_SCHEMA.settings) <= {f.name for f in fields(SimConfig)}
    flags = {o for a in build_parser()._actions for o in a.option_strings}
    assert {s.option for s in SIM_SCHEMA.settings.values()} <= flags
    assert set(SIM_FLAGS) == set(SIM_SCHEMA.settings) - {"seed"}  # --seed is the shared option (core.cli)
    assert EXPERIMENT_KEYS == {"sites", "preset", *SIM_SCHEMA.keys().values()}
    assert {name: key for name, case in CASES.items() if case[0] for key in case[0]} == SIM_SCHEMA.keys()


@pytest.mark.parametrize("name", [name for name, case in CASES.items() if case[0] is not None])
def test_each_experiment_file_key_reaches_its_field(name: str, tmp_path: Path) -> None:
    entry, expected = CASES[name][:2]
    folder = tmp_path / HERE
    folder.mkdir()
    (folder / "exp.toml").write_text("".join(f"{key} = {_toml(value)}\n" for key, value in entry.items()))
    overrides = load_experiment(folder / "exp.toml")
    assert set(overrides) == {"preset", name}
    config = preset(overrides.pop("preset"), **overrides)
    expected = tmp_path / expected if isinstance(expected, Path) else expected
    assert getattr(config, name) == expected
    assert config.to_dict()[name] == json.loads(json.dumps(expected, default=str))  # what the run records


@pytest.mark.parametrize("name", list(CASES))
def test_each_flag_reaches_its_field(name: str, tmp_path: Path, monkeypatch) -> None:
    argv, expected = CASES[name][2:]
    seen: list[SimConfig] = []
    monkeypatch.setattr(sim.run, "run_experiment", seen.append)
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 0
    assert getattr(seen[0], name) == expected
    others = {n for n in SIM_SCHEMA.settings if n != name and getattr(seen[0], n) != SIM_SCHEMA.default(n)}
    assert others == set()  # the flag set its own setting only


def test_an_experiment_files_sites_declare_their_layout(tmp_path: Path) -> None:
    layout = {"csv": "scan.csv", "image_dir": "png", "id_column": "image", "age_column": "age", "sex_column": "sex",
              "label_unit": "years"}
    assert set(layout) == {key.replace("-", "_") for key in LAYOUT_SCHEMA.keys("node").values()}
    (tmp_path / "exp.toml").write_text("\n".join(["[[sites]]", 'path = "a"'] +
                                                 [f'{key} = "{value}"' for key, value in layout.items()]) + "\n")
    overrides = load_experiment(tmp_path / "exp.toml")
    config = preset(overrides.pop("preset"), **overrides)
    assert config.real_sites[0].data == SiteDataConfig(tmp_path / "a", "scan.csv", "png", "image", "age", "sex",
                                                       "years")


def test_a_bad_value_in_a_file_or_a_flag_is_one_line_naming_its_key(tmp_path: Path, capsys) -> None:
    (tmp_path / "bad.toml").write_text('rounds = "two"\n')  # was a traceback once the run compared it with 1
    with pytest.raises(ValueError, match=r"bad.toml: rounds = 'two' is not a valid value \(expected a whole number\)"):
        load_experiment(tmp_path / "bad.toml")
    (tmp_path / "bad.toml").write_text("dp_noise_multipliers = [1.0, -2]\n")
    with pytest.raises(ValueError, match=r"dp_noise_multipliers = \[1.0, -2\] is not a valid value \(expected a pos"):
        load_experiment(tmp_path / "bad.toml")
    assert main(["--out", str(tmp_path / "o"), "--strategy-option", "speed"]) == 2
    assert "--strategy-option = 'speed' is not a valid value (--strategy-option 'speed' is not KEY=VALUE" in \
        capsys.readouterr().err
