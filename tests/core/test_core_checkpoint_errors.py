"""Checkpoint errors that help: one line for a random, truncated or inconsistent file; `pretrain --out` that
cannot be written is refused before training and leaves no temporary file."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch

from core.checkpoint import CheckpointError, describe, load_checkpoint, save_checkpoint
from core.model.config import TJNetConfig
from core.model.tjnet import TJNet
from server.cli import main as server_main
from sim.phantom.writer import generate_site


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    model = TJNet(TJNetConfig(image_size=32, width=0.25))
    return save_checkpoint(tmp_path / "model.pt", model, describe(model))


def _one_line(path: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and len(message) < 300, message
    return message


def test_random_bytes_are_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "random.pt"
    path.write_bytes(os.urandom(5000))
    message = _one_line(path)
    assert "not a PyTorch checkpoint, or a truncated or damaged one" in message and "weights_only" not in message


def test_a_truncated_checkpoint_is_one_line(saved: Path) -> None:
    saved.write_bytes(saved.read_bytes()[:3000])
    assert "truncated" in _one_line(saved)


def test_weights_that_do_not_match_the_metadata_are_summed_up(saved: Path) -> None:
    payload = torch.load(saved, weights_only=True)
    payload["metadata"]["model_config"]["width"] = 0.5
    del payload["state_dict"]["block1.0.0.weight"]
    torch.save(payload, saved)
    message = _one_line(saved)
    assert "weights do not match the saved model config" in message
    assert "1 array(s) missing, e.g. block1.0.0.weight" in message and "of another shape" in message


def test_a_failed_save_leaves_no_temporary_file(saved: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full_disk(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    model = TJNet(TJNetConfig(image_size=32, width=0.25))
    with pytest.raises(OSError):
        save_checkpoint(saved, model, describe(model))
    assert sorted(p.name for p in saved.parent.iterdir()) == ["model.pt"]


def test_pretrain_out_naming_a_folder_is_refused_before_training(
        tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture) -> None:
    generate_site("rsna", 12, tmp_path / "site", seed=1, image_size=32)
    (tmp_path / "out").mkdir()
    capsys.readouterr()  # the phantom writer's progress bar
    caplog.set_level(logging.INFO)
    code = server_main(["pretrain", "--data", str(tmp_path / "site"), "--out", str(tmp_path / "out"),
                        "--epochs", "1", "--image-size", "32", "--width", "0.25", "--no-progress"])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {tmp_path / 'out'} is a folder; give the checkpoint file to write, e.g. {tmp_path / 'out' / 'model.pt'}"]
    assert "decoded" not in caplog.text and "epoch" not in caplog.text  # refused before reading or training
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "site"] and not any((tmp_path / "out").iterdir())


def test_a_config_asking_for_a_huge_model_is_refused_before_anything_is_allocated(
        saved: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's 1.4 KB checkpoint whose settings ask for a 6.8 GB model: the weights are checked first."""
    import core.checkpoint as checkpoint

    payload = torch.load(saved, weights_only=True)
    payload["metadata"]["model_config"]["width"] = 40.0
    payload["state_dict"] = dict(list(payload["state_dict"].items())[:2])
    torch.save(payload, saved)
    devices: list[str] = []
    real_build = checkpoint.build_model

    def spy(*args: object, **kwargs: object) -> torch.nn.Module:
        devices.append(torch.empty(0).device.type)  # the default device the model is built on
        return real_build(*args, **kwargs) if devices[-1] == "meta" else torch.nn.Linear(1, 1)

    monkeypatch.setattr(checkpoint, "build_model", spy)
    assert "weights do not match the saved model config" in _one_line(saved)
    assert devices == ["meta"]  # never built for real


def test_frozen_blocks_tj_net_does_not_have_are_a_damaged_checkpoint(saved: Path) -> None:
    payload = torch.load(saved, weights_only=True)
    payload["metadata"]["frozen_blocks"] = [1, 7]
    torch.save(payload, saved)
    assert "lists frozen blocks [1, 7], but TJ-Net has blocks 1 to 6" in _one_line(saved)
