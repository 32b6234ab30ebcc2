"""The stress benchmark runs end to end on a phantom site, for a raw and a preprocessed model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.bench_stress import main
from core.checkpoint import describe, save_checkpoint
from core.model.config import TJNetConfig
from core.model.tjnet import TJNet
from core.preprocess import PreprocessConfig
from sim.phantom.writer import generate_site


def test_stress_rows_for_both_models(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    site = generate_site("rsna", 40, tmp_path / "site", seed=2, image_size=64)
    model = TJNet(TJNetConfig(image_size=32, width=0.25))
    save_checkpoint(tmp_path / "raw.pt", model, describe(model))
    settings = PreprocessConfig(min_side=40).resolved().to_dict()
    save_checkpoint(tmp_path / "pre.pt", model, describe(model, preprocess=settings))
    code = main(["--data", str(site), "--model", str(tmp_path / "raw.pt"), "--model", str(tmp_path / "pre.pt"),
                 "--split", "train", "--transforms", "rotate90", "downscale0.5", "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert code == 0 and [r["transform"] for r in rows] == ["clean", "rotate90", "downscale0.5"] * 2
    raw, pre = rows[:3], rows[3:]
    assert all(r["refused_share"] == 0 for r in raw) and raw[0]["ms_per_image"] == 0
    assert pre[2]["refused"] == {"refused: too small": pre[2]["n"]} and pre[2]["scored"] == 0  # 32 px < 40
    assert "delta_months" in raw[1] and raw[1]["delta_low"] <= raw[1]["delta_months"] <= raw[1]["delta_high"]
    assert pre[0]["ms_per_image"] > 0 and pre[0]["versus_first"]["paired"] == pre[0]["scored"]


def test_an_unknown_transform_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    site = generate_site("rsna", 12, tmp_path / "site", seed=2, image_size=64)
    model = TJNet(TJNetConfig(image_size=32, width=0.25))
    save_checkpoint(tmp_path / "raw.pt", model, describe(model))
    capsys.readouterr()
    assert main(["--data", str(site), "--model", str(tmp_path / "raw.pt"), "--transforms", "sepia"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown transform")


def test_refusals_only_with_the_defaults_a_new_user_gets(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    site = generate_site("rsna", 40, tmp_path / "site", seed=2, image_size=64)
    code = main(["--data", str(site), "--preprocess", "default,min_side=40", "--split", "train",
                 "--transforms", "rotate90", "downscale0.5", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["orientation_check"]["checked"]  # resolved on the split's images like a folder
    rows = {row["transform"]: row for row in out["rows"]}
    assert list(rows) == ["clean", "rotate90", "downscale0.5"]
    assert rows["downscale0.5"]["refused"] == {"refused: too small": rows["downscale0.5"]["n"]}  # 32 px < 40
    assert rows["clean"]["refused_share"] < 0.1
    assert main(["--data", str(site), "--split", "train"]) == 2  # neither models nor settings: one line
    assert "--preprocess SPEC" in capsys.readouterr().err


def test_a_model_is_scored_through_given_settings_instead_of_its_own(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    site = generate_site("rsna", 40, tmp_path / "site", seed=2, image_size=64)
    model = TJNet(TJNetConfig(image_size=32, width=0.25))
    save_checkpoint(tmp_path / "raw.pt", model, describe(model))
    code = main(["--data", str(site), "--model", str(tmp_path / "raw.pt"), "--preprocess", "default,min_side=40",
                 "--split", "train", "--transforms", "downscale0.5", "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert code == 0 and rows[0]["model"] == "raw (--preprocess default,min_side=40)"
    assert rows[0]["ms_per_image"] > 0  # the raw model's images went through the given settings
    assert rows[1]["refused"] == {"refused: too small": rows[1]["n"]}  # 32 px < 40
