"""`python -m client accept`: the site's checks of a model, the verdict in its audit log, and `predict` honouring it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from client.__main__ import main as client_main
from core.checkpoint import describe, load_checkpoint, save_checkpoint
from core.intervals.conformal import ConformalInterval, fit_conformal
from core.data import SiteDataConfig, load_site
from core.model.config import TJNetConfig
from core.model.tjnet import TJNet
from core.preprocess import PreprocessConfig
from sim.phantom.writer import generate_site

# a pose check no model passes: any change moves a copy, and no pose may have one
EVERY_COPY_MOVES = "accept-pose-tolerance-months = 0.0\naccept-max-pose-moved = 0.0\n"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_site("rsna", 150, tmp_path_factory.mktemp("accept") / "site", seed=7, image_size=48)


def _model(seed: int = 0) -> TJNet:
    torch.manual_seed(seed)
    return TJNet(TJNetConfig(image_size=48, width=0.25))


@pytest.fixture(scope="module")
def good(site: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained TJ-Net with an interval calibrated on the site's val split."""
    model = _model()
    val = load_site(SiteDataConfig(site), 48, None, seed=0, splits=("val",)).val
    interval = fit_conformal(model, val, torch.device("cpu"))
    return save_checkpoint(tmp_path_factory.mktemp("m") / "good.pt", model,
                           describe(model, conformal=interval.to_dict()))


def _accept(tmp_path: Path, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, dict]:
    code = client_main(["accept", "--state-dir", str(tmp_path / "state"), "--json", *args])
    return code, json.loads(capsys.readouterr().out)


def _audit(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "state" / "audit.jsonl").read_text().splitlines()]


def test_a_good_model_is_accepted_against_itself_and_recorded(site: Path, good: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    current = tmp_path / "current.pt"
    current.write_bytes(good.read_bytes())
    code, result = _accept(tmp_path, capsys, "--model", str(good), "--data", str(site), "--against", str(current))
    assert code == 0 and result["accepted"] is True and result["reason"] == ""
    figures = result["figures"]
    assert figures["accuracy"]["compared"] and figures["accuracy"]["difference_months"] == 0.0
    assert figures["accuracy"]["n"] == figures["interval"]["n"] > 0
    # the pose check reads up to 24 images: here the whole test split (11)
    assert figures["quality_gate"]["refused"] == 0 and figures["poses"]["images"] == figures["accuracy"]["n"]
    entry = _audit(tmp_path)[-1]
    assert entry["event"] == "model_acceptance" and entry["accepted"] is True
    assert entry["model_sha256"] == result["model_sha256"] and len(entry["model_sha256"]) == 64
    assert entry["figures"] == figures


def test_broken_weights_are_rejected_with_the_reason(site: Path, good: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:5000])
    code, result = _accept(tmp_path, capsys, "--model", str(truncated), "--data", str(site))
    assert code == 1 and result["accepted"] is False and result["reason"].startswith("broken weights")
    loaded = load_checkpoint(good)
    state = loaded.model.state_dict()
    state["block6.head.5.weight"].fill_(float("nan"))
    loaded.model.load_state_dict(state)
    nan = save_checkpoint(tmp_path / "nan.pt", loaded.model, loaded.metadata)
    code, result = _accept(tmp_path, capsys, "--model", str(nan), "--data", str(site))
    assert code == 1 and result["reason"].startswith("broken weights") and "NaN or infinite" in result["reason"]
    assert [e["accepted"] for e in _audit(tmp_path)] == [False, False]


def test_a_model_worse_than_the_current_one_beyond_the_margin_is_rejected(site: Path, good: Path, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    loaded = load_checkpoint(good)
    last = loaded.model.block6.head[5]  # the age classifier's output layer
    with torch.no_grad():  # every image read as the top class: far off for most children
        last.weight.zero_()
        last.bias.zero_()
        last.bias[-1] = 50.0
    worse = save_checkpoint(tmp_path / "worse.pt", loaded.model, loaded.metadata)
    code, result = _accept(tmp_path, capsys, "--model", str(worse), "--data", str(site), "--against", str(good))
    accuracy = result["figures"]["accuracy"]
    assert code == 1 and not accuracy["passed"] and accuracy["difference_low"] > 1.5
    assert "not shown to be within 1.5 months of the current model" in result["reason"]
    code, result = _accept(tmp_path, capsys, "--model", str(worse), "--data", str(site), "--against", str(good),
                           "--margin", "1000")
    assert result["figures"]["accuracy"]["passed"]


def test_interval_quality_gate_and_pose_checks_each_reject(site: Path, good: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    loaded = load_checkpoint(good)
    narrow = dict(loaded.metadata, conformal=ConformalInterval(0.9, 0.01, 0.01, 50, "val").to_dict())
    path = save_checkpoint(tmp_path / "narrow.pt", loaded.model, narrow)
    code, result = _accept(tmp_path, capsys, "--model", str(path), "--data", str(site))
    assert code == 1 and "interval holds only" in result["reason"] and not result["figures"]["interval"]["passed"]
    bare = save_checkpoint(tmp_path / "bare.pt", loaded.model, describe(loaded.model))
    code, result = _accept(tmp_path, capsys, "--model", str(bare), "--data", str(site))
    assert code == 1 and "no prediction interval" in result["reason"]
    gate = PreprocessConfig(min_side=10_000).resolved().to_dict()
    path = save_checkpoint(tmp_path / "gate.pt", loaded.model, dict(loaded.metadata, preprocess=gate))
    code, result = _accept(tmp_path, capsys, "--model", str(path), "--data", str(site))
    assert code == 1 and "quality gate refuses 100.0%" in result["reason"]
    config = tmp_path / "site.toml"
    config.write_text(f'state-dir = "{tmp_path / "state"}"\n{EVERY_COPY_MOVES}')
    code = client_main(["accept", "--site-config", str(config), "--model", str(good), "--data", str(site), "--json"])
    result = json.loads(capsys.readouterr().out)
    poses = result["figures"]["poses"]
    assert code == 1 and not poses["passed"] and "turned, mirrored or inverted" in result["reason"]
    assert sum(poses[name]["read"] for name in ("rotate90", "mirror", "invert")) > 0


def test_predict_says_whether_the_model_was_accepted_and_refuses_an_unaccepted_one(
        site: Path, good: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    image = next((site / "images").iterdir())
    state = tmp_path / "state"
    config = tmp_path / "site.toml"
    config.write_text(f'state-dir = "{state}"\nrequire-acceptance = true\n')
    predict = ["predict", "--model", str(good), "--sex", "F", "--json", "--no-progress", str(image)]
    code = client_main([*predict, "--state-dir", str(state)])
    row = json.loads(capsys.readouterr().out)
    assert code == 0 and row["model_acceptance"] == "never checked at this site"
    assert client_main([*predict, "--site-config", str(config)]) == 2
    assert "requires acceptance" in capsys.readouterr().err
    assert client_main(["accept", "--state-dir", str(state), "--model", str(good), "--data", str(site)]) == 0
    assert "poses (11 images; moved: read more than 12 months off, at most 50% per pose): rotate90 " \
        in capsys.readouterr().out
    code = client_main([*predict, "--site-config", str(config), "--report", "--out", str(tmp_path / "out")])
    row = json.loads(capsys.readouterr().out)
    assert code == 0 and row["model_acceptance"].startswith("accepted at this site 20")
    report = next((tmp_path / "out" / "reports").iterdir()).read_text()
    assert "accepted at this site" in report
    config.write_text(f'state-dir = "{state}"\nrequire-acceptance = true\n{EVERY_COPY_MOVES}')
    assert client_main(["accept", "--site-config", str(config), "--model", str(good), "--data", str(site)]) == 1
    capsys.readouterr()
    assert client_main([*predict, "--site-config", str(config)]) == 2  # the latest verdict counts
    assert "rejected at this site" in capsys.readouterr().err
