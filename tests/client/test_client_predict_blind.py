"""`client predict` flags a model that gives every radiograph the same age, and refuses an --out that is a file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from predict_helpers import radiograph, tiny_checkpoint

from client.__main__ import main
from client.predict_command import blind_model_warning
from core.checkpoint import describe, load_checkpoint, save_checkpoint
from tests.core.data.data_sites import write_image


def _blind(path: Path) -> Path:
    """A tiny TJ-Net whose head ignores its input: every image gets the same age."""
    model = load_checkpoint(tiny_checkpoint(path)).model
    with torch.no_grad():
        for name, parameter in model.block6.named_parameters():
            if name.endswith("weight"):
                parameter.zero_()
    return save_checkpoint(path, model, describe(model))


def test_a_model_that_gives_every_image_the_same_age_is_flagged(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "day"
    folder.mkdir()
    for seed in range(6):
        write_image(folder / f"{seed}.png", radiograph(seed), "png8")
    code = main(["predict", "--model", str(_blind(tmp_path / "blind.pt")), "--sex", "F", "--json", "--no-progress",
                 str(folder)])
    err = capsys.readouterr().err
    assert code == 1
    assert "warning: the model read all 6 images as" in err and "does not read the image" in err


def test_the_spread_rule() -> None:
    assert blind_model_warning([114.5] * 4) == ""  # too few readings to judge
    assert "all 30 images as 114.5 months" in blind_model_warning([114.5] * 30)  # the case
    assert blind_model_warning([20.0, 60.0, 114.5, 150.0, 200.0]) == ""


def test_out_naming_an_existing_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_image(tmp_path / "a.png", radiograph(1), "png8")
    (tmp_path / "out.csv").write_text("keep me")
    code = main(["predict", "--model", str(tiny_checkpoint(tmp_path / "m.pt")), "--sex", "F", "--out",
                 str(tmp_path / "out.csv"), str(tmp_path / "a.png")])
    err = capsys.readouterr().err
    assert code == 2 and "is an existing file" in err and (tmp_path / "out.csv").read_text() == "keep me"
