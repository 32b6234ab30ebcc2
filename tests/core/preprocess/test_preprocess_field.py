"""Collimator bands, padding and burned-in markers removed before equalisation (phantom hands only)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.preprocess import Pose, PreprocessConfig, Preprocessor
from core.preprocess import pipeline as pipeline_module
from core.preprocess.config import LOW_CONFIDENCE, MIRRORED
from core.preprocess.field import COLLIMATOR, PADDING, inpaint_markers, marker_mask, removed_bands
from core.preprocess.folder import preprocess_folder
from core.preprocess.stress import COLLIMATION_SHARE, collimation, noise, text_marker

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("side", [100, 128, 512])
def test_a_burned_in_marker_is_found_and_in_painted_and_nothing_else(phantom_hands, side) -> None:
    import cv2

    for sample in phantom_hands:
        clean = cv2.resize(sample.image, (side, side), interpolation=cv2.INTER_AREA)
        marked = text_marker(clean, RNG)
        ink = marked != clean
        mask = marker_mask(marked)
        assert mask[ink].mean() >= 0.9  # the strokes
        assert (mask & ~ink).sum() <= 0.2 * ink.sum()  # little else
        assert not marker_mask(clean).any()  # a hand without a marker keeps every pixel
        filled = inpaint_markers(marked)
        assert np.abs(filled - clean)[ink].mean() < 0.25 * np.abs(marked - clean)[ink].mean()
        touched = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        assert np.array_equal(filled[~touched], marked[~touched])  # only the marker and its rim change


def test_noise_and_bright_bone_are_not_taken_for_markers(phantom_hands) -> None:
    for sample in phantom_hands:
        noisy = noise(sample.image, np.random.default_rng(1))
        assert marker_mask(noisy).mean() < 0.002
        saturated = np.clip(sample.image * 1.6, 0, 1)  # bones burned out to the top level: thick, kept
        assert marker_mask(saturated).mean() < 0.002


def test_bands_of_any_level_are_darkened_and_a_hand_without_them_is_unchanged(phantom_image) -> None:
    banded = collimation(phantom_image, RNG)
    out = removed_bands(banded)[0]
    h, w = banded.shape
    band = round(COLLIMATION_SHARE * h)
    assert np.allclose(out[:band], banded.min()) and np.allclose(out[:, -band:], banded.min())
    inner = slice(band + 2, h - band - 2), slice(band + 2, w - band - 2)
    assert np.array_equal(out[inner], banded[inner])
    assert removed_bands(phantom_image)[0] is phantom_image
    white = np.pad(phantom_image, 20, constant_values=1.0)
    top = removed_bands(white)[0][:20]
    assert top.max() <= phantom_image.max() and top.max() == white.min()


def test_the_default_pipeline_reads_a_marked_film_as_the_clean_one(phantom_hands) -> None:
    preprocessor = Preprocessor(PreprocessConfig(canonical=False))
    without = Preprocessor(PreprocessConfig(canonical=False, inpaint_markers=False))
    for sample in phantom_hands:
        marked = text_marker(sample.image, RNG)
        ink = marked != sample.image
        clean = preprocessor(sample.image).image
        assert np.abs(preprocessor(marked).image - clean)[ink].mean() < \
            0.25 * np.abs(without(marked).image - clean)[ink].mean()


def test_a_large_bright_region_and_a_few_bright_pixels_are_not_markers(phantom_image) -> None:
    image = phantom_image * 0.8
    label = image.copy()
    label[:60, :60] = 1.0  # a white label over a fifth of the film: not text
    assert not marker_mask(label).any()
    specks = image.copy()
    specks[5, 5] = specks[5, 6] = specks[70, 3] = 1.0  # dead pixels, not text
    assert not marker_mask(specks).any()


def test_a_marker_softened_by_compression_is_in_painted_with_its_halo(phantom_image) -> None:
    import cv2

    clean = cv2.resize(phantom_image, (256, 256), interpolation=cv2.INTER_LINEAR)
    marked = cv2.GaussianBlur(text_marker(clean, RNG), (0, 0), 0.5)
    halo = np.abs(marked - cv2.GaussianBlur(clean, (0, 0), 0.5)) > 0.05
    filled = inpaint_markers(marked)
    assert np.abs(filled - clean)[halo].mean() < 0.3 * np.abs(marked - clean)[halo].mean()


def test_a_constant_band_at_the_films_own_grey_is_darkened_too(phantom_image) -> None:
    grey = float(np.median(phantom_image))  # not brighter than the film: no collimator band, but padding
    padded = np.pad(phantom_image, 20, constant_values=grey)
    assert np.allclose(removed_bands(padded)[0][:20], phantom_image.min())


def test_an_inverted_padded_film_left_to_the_orientation_model_comes_back_as_the_clean_one(phantom_hands) -> None:
    # black padding, as a film fitted into a square has it: white once inverted, and cleaned as a band in that frame
    preprocessor = Preprocessor(PreprocessConfig(physical_polarity=False, small_angle=False))
    for sample in phantom_hands[:3]:
        padded = np.pad(sample.image[:, 16:-16], ((0, 0), (16, 16)))
        clean, inverted = preprocessor(padded), preprocessor(1.0 - padded)
        assert inverted.pose.inverted and not clean.pose.inverted
        assert np.abs(inverted.image - clean.image).mean() < 0.01
        assert inverted.bands == clean.bands == (PADDING,)  # the kind read in the frame the film was cleaned in


def test_a_collimator_band_is_told_from_padding(phantom_image) -> None:
    assert removed_bands(phantom_image) == (phantom_image, ())
    assert removed_bands(collimation(phantom_image, RNG))[1] == (COLLIMATOR,)  # bright, uniform: may cut anatomy
    assert removed_bands(np.pad(phantom_image, 20))[1] == (PADDING,)  # black frame around the whole film
    grey = np.pad(phantom_image, 20, constant_values=float(np.median(phantom_image)))
    assert removed_bands(grey)[1] == (PADDING,)  # constant at the film's own grey: a shutter, not brighter
    both = np.pad(phantom_image, ((0, 20), (0, 0)))  # black padding below, an unexposed band on top
    both[:15] = 0.85
    assert removed_bands(both)[1] == (COLLIMATOR, PADDING)


class _Vote:
    """An orientation model that names every film with one pose, at one confidence."""

    def __init__(self, pose: Pose, confidence: float) -> None:
        self.pose, self.confidence = pose, confidence

    def predict_checked(self, image: np.ndarray, polarity: bool | None = None) -> tuple[Pose, float]:
        return self.pose, self.confidence


def test_a_weak_mirroring_vote_refuses_a_collimated_film_with_its_reason_but_not_a_padded_one(
        phantom_image, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(pipeline_module, "load_cached", lambda path, sha256: _Vote(Pose(0, mirrored=True), 0.5))
    settings = PreprocessConfig(site_check=False, small_angle=False)
    assert settings.min_confidence < 0.5 < settings.collimated_mirror_confidence
    images = tmp_path / "site" / "images"
    images.mkdir(parents=True)
    films = {"clean": phantom_image, "padded": np.pad(phantom_image, 20), "collimated": collimation(phantom_image, RNG)}
    for name, film in films.items():
        Image.fromarray(np.rint(film * 255).astype(np.uint8)).save(images / f"{name}.png")
    preprocess_folder(tmp_path / "site", tmp_path / "out", Preprocessor(settings))
    with open(tmp_path / "out" / "qc.csv", newline="") as handle:
        rows = {row["id"]: row for row in csv.DictReader(handle)}
    assert (rows["clean"]["bands"], rows["padded"]["bands"], rows["collimated"]["bands"]) == ("", PADDING, COLLIMATOR)
    for name in ("clean", "padded"):  # the ordinary floor: kept, mirrored as the model says
        assert rows[name]["refused"] == "" and rows[name]["flags"] == MIRRORED
    assert rows["collimated"]["refused"].startswith("mirroring uncertain on a collimated film (confidence 0.50, "
                                                    "below 0.90")
    assert rows["collimated"]["flags"] == f"{MIRRORED};{LOW_CONFIDENCE}"
    assert sorted(p.stem for p in (tmp_path / "out" / "images").glob("*.png")) == ["clean", "padded"]


@pytest.mark.parametrize("pose", [Pose(), Pose(2)], ids=str)
def test_a_collimated_film_not_named_mirrored_is_held_to_the_ordinary_floor(phantom_image, monkeypatch, pose) -> None:
    monkeypatch.setattr(pipeline_module, "load_cached", lambda path, sha256: _Vote(pose, 0.5))
    result = Preprocessor(PreprocessConfig(small_angle=False))(collimation(phantom_image, RNG))
    assert result.bands == (COLLIMATOR,) and result.refused is None and result.pose == pose
