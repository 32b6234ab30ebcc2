"""What a reading rests on: the pipeline's changes and confidence, heat maps on the background, honest captions."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from predict_helpers import tiny_checkpoint

from client import predict as client_predict
from client.__main__ import main
from client.reading import ReadingConfig, describe_preprocessing, heat_outside_hand, pose_flag
from core.preprocess.handmask import HandMaskModel
from core.preprocess.pipeline import hand_masker
from core.preprocess.segment import hand_mask
from sim.phantom.synth import synthesize
from tests.core.preprocess.conftest import canonical_profile
from core.checkpoint import describe, save_checkpoint
from core.model.config import TJNetConfig
from core.model.tjnet import TJNet
from core.preprocess import Pose, PreprocessConfig, PreprocessResult
from sim.phantom.writer import generate_site


def square_with_hand() -> np.ndarray:
    """A 48 px square: black background, a bright 'hand' in its middle."""
    square = np.zeros((48, 48), dtype=np.uint8)
    square[10:40, 14:34] = 200
    return square


def test_heat_mass_outside_the_hand_is_measured() -> None:
    corner, centre = np.zeros((3, 3), np.float32), np.zeros((3, 3), np.float32)
    corner[0, 0], centre[1, 1] = 1.0, 1.0
    assert heat_outside_hand(corner, square_with_hand(), hand_mask) > 0.8
    assert heat_outside_hand(centre, square_with_hand(), hand_mask) < 0.3
    assert heat_outside_hand(np.zeros((3, 3), np.float32), square_with_hand(), hand_mask) is None  # an empty map
    assert heat_outside_hand(corner, np.zeros((48, 48), np.uint8), hand_mask) is None  # no hand found
    for masker in (hand_masker(PreprocessConfig().resolved()), hand_masker(PreprocessConfig(mask="threshold"))):
        assert heat_outside_hand(corner, np.zeros((48, 48), np.uint8), masker) is None  # either mask: a blank film


def collimated_film(index: int) -> tuple[np.ndarray, np.ndarray]:
    """A canonical phantom behind a bright, tilted collimator (the threshold mask finds no hand there), as the
    uint8 square a model reads, and its true hand mask."""
    profile = canonical_profile(collimation=1.0)
    sample = synthesize(replace(profile, acquisition=replace(profile.acquisition, collimation_level=0.8)), 21, index)
    return (sample.image * 255).astype(np.uint8), sample.mask.astype(bool)


def test_the_heat_maps_hand_is_the_mask_the_settings_name() -> None:
    learned, threshold = (hand_masker(PreprocessConfig(mask=mask).resolved()) for mask in ("learned", "threshold"))
    for index in range(4):
        square, truth = collimated_film(index)
        on_hand = truth.astype(np.float32)
        assert heat_outside_hand(on_hand, square, learned) < 0.15  # the learned mask (the default) holds the hand
        assert heat_outside_hand(1.0 - on_hand, square, learned) > 0.7
        assert heat_outside_hand(on_hand, square, threshold) is None  # the threshold's mask finds none here


def test_the_pipelines_changes_and_confidence_are_said_and_an_unsure_change_warned() -> None:
    config = PreprocessConfig()
    unsure = PreprocessResult(np.zeros((8, 8), np.float32), confidence=0.29, pose=Pose(mirrored=True))
    text = describe_preprocessing(config, unsure)
    assert "mirrored left-right" in text and "confidence 0.29" in text and "CLAHE" in text
    assert "mirrored" in pose_flag(unsure, ReadingConfig()) and "0.29" in pose_flag(unsure, ReadingConfig())
    sure = PreprocessResult(np.zeros((8, 8), np.float32), confidence=0.95, pose=Pose(quarter_turns=1))
    assert pose_flag(sure, ReadingConfig()) is None and "turned 90 degrees" in describe_preprocessing(config, sure)
    untouched = PreprocessResult(np.zeros((8, 8), np.float32), confidence=0.4)
    assert pose_flag(untouched, ReadingConfig()) is None  # nothing changed, nothing to warn about
    assert describe_preprocessing(None, None).startswith("none")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("reading")
    site = generate_site("rsna", 1, root / "site", seed=3, image_size=128)
    torch.manual_seed(0)
    model = TJNet(TJNetConfig(image_size=48, width=0.25))
    preprocessed = save_checkpoint(root / "pre.pt", model, describe(model, preprocess=PreprocessConfig().resolved()
                                                                   .to_dict()))
    return preprocessed, next((site / "images").iterdir())


def run(capsys: pytest.CaptureFixture, model: Path, image: Path, out: Path) -> dict:
    assert main(["predict", "--model", str(model), "--sex", "F", "--json", "--no-progress", "--report",
                 "--out", str(out), str(image)]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("where, warned", [((0, 0), True), ((1, 1), False)])
def test_a_heat_map_on_the_background_is_warned_in_the_row_and_the_report(
        phantom: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
        where: tuple[int, int], warned: bool) -> None:
    model = tiny_checkpoint(tmp_path / "model.pt")
    heat = np.zeros((3, 3), np.float32)
    heat[where] = 1.0
    monkeypatch.setattr(client_predict, "heat_map", lambda *args: heat)
    row = run(capsys, model, phantom[1], tmp_path / "out")
    page = Path(row["report"]).read_text()
    assert (row["heatmap_outside_hand"] > 0.5) == warned
    assert ("mass lies outside the hand" in (row["quality_flags"] or "")) == warned
    assert ("mass lies outside the hand" in page) == warned
    assert f"{row['heatmap_outside_hand']:.0%} of its mass outside the hand" in page


def test_the_report_shows_what_preprocessing_did_with_its_confidence(phantom: tuple[Path, Path], tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    row = run(capsys, phantom[0], phantom[1], tmp_path / "out")
    assert row["preprocessing"].startswith("pose: ") and f"confidence {row['quality_confidence']:.2f}" in row[
        "preprocessing"]
    page = Path(row["report"]).read_text()
    assert row["preprocessing"] in page.replace("&#x27;", "'")


def test_predict_measures_the_heat_outside_the_learned_mask_by_default(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    square, truth = collimated_film(0)  # a model without preprocessing settings reads the film as stored
    image = tmp_path / "films" / "collimated.png"
    image.parent.mkdir()
    cv2.imwrite(str(image), square)
    monkeypatch.setattr(client_predict, "heat_map", lambda *args: truth.astype(np.float32))
    row = run(capsys, tiny_checkpoint(tmp_path / "model.pt"), image, tmp_path / "out")
    assert row["heatmap_outside_hand"] != "" and row["heatmap_outside_hand"] < 0.15
    assert "mass lies outside the hand" not in (row["quality_flags"] or "")


def test_the_heat_maps_mask_is_the_one_the_models_preprocessing_names(phantom: tuple[Path, Path],
                                                                        tmp_path: Path) -> None:
    model = TJNet(TJNetConfig(image_size=48, width=0.25))
    settings = PreprocessConfig(mask="threshold").resolved().to_dict()
    threshold = save_checkpoint(tmp_path / "threshold.pt", model, describe(model, preprocess=settings))
    assert client_predict.Predictor(client_predict.PredictSettings(threshold)).hand_mask is hand_mask
    assert isinstance(client_predict.Predictor(client_predict.PredictSettings(phantom[0])).hand_mask, HandMaskModel)
