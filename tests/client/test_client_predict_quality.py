"""`predict` with a checkpoint that records preprocessing: the model reads preprocessed images, the gate refuses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from predict_helpers import tree_digest

from client.__main__ import main
from core.checkpoint import describe, load_checkpoint, save_checkpoint
from core.data import read_image
from core.predict.inference import model_input
from core.model.config import TJNetConfig
from core.model.tjnet import TJNet
from core.preprocess import PreprocessConfig, preprocessor_for
from sim.phantom.writer import generate_site
from tests.core.data.data_sites import hand, write_image


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("quality")
    site = generate_site("rsna", 3, root / "site", seed=2, image_size=128)
    folder = root / "inbox"
    folder.mkdir()
    for path in sorted((site / "images").iterdir()):
        (folder / path.name).write_bytes(path.read_bytes())
    write_image(folder / "noise.png", 0.05 * np.random.default_rng(0).random((96, 80)), "png8")
    write_image(folder / "tiny.png", hand(1, 20, 24), "png8")
    torch.manual_seed(0)
    model = TJNet(TJNetConfig(image_size=48, width=0.25))
    checkpoint = save_checkpoint(root / "model.pt", model,
                                 describe(model, preprocess=PreprocessConfig(segment=True).resolved().to_dict()))
    return checkpoint, folder


def test_quality_gate_refuses_with_reasons_and_the_rest_is_read_preprocessed(
        setup: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    checkpoint, folder = setup
    before = tree_digest(folder)
    code = main(["predict", "--model", str(checkpoint), "--sex", "M", "--json", "--no-progress", "--report",
                 "--out", str(tmp_path / "out"), str(folder)])
    rows = {Path(r["image"]).name: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert code == 0 and tree_digest(folder) == before
    noise = rows["noise.png"]  # no hand in it: the segmentation (or, first, the orientation check) refuses it
    assert noise["status"] == "refused" and noise["reason"].startswith("refused by the quality gate: ")
    assert "no hand found" in noise["reason"] or "orientation uncertain" in noise["reason"]
    assert rows["tiny.png"]["status"] == "refused" and "too small" in rows["tiny.png"]["reason"]
    assert "too_small" in rows["tiny.png"]["quality_flags"]
    phantoms = [r for name, r in rows.items() if name not in ("noise.png", "tiny.png") and r["status"] == "ok"]
    assert len(phantoms) >= 2 and all(r["quality_confidence"] > 0 for r in phantoms)  # hands pass the gate
    loaded = load_checkpoint(checkpoint)
    preprocess = preprocessor_for(loaded.metadata)
    for row in phantoms:  # the model read the preprocessed image, not the file as it is
        _, tensor = model_input(preprocess(read_image(Path(row["image"]))).image, 48)
        with torch.inference_mode():
            expected = float(loaded.model.eval()(tensor[None], torch.ones(1)).expected_months[0])
        assert row["bone_age_months"] == pytest.approx(expected, abs=0.06)
    page = (tmp_path / "out" / "reports" / "noise.html").read_text()
    assert "Not assessed" in page and noise["reason"] in page
