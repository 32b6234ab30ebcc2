"""Collimator bands, padding and burned-in markers removed before equalisation (phantom hands only)."""

from __future__ import annotations

import numpy as np
import pytest

from core.preprocess import PreprocessConfig, Preprocessor
from core.preprocess.field import inpaint_markers, marker_mask, remove_bands
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
    out = remove_bands(banded)
    h, w = banded.shape
    band = round(COLLIMATION_SHARE * h)
    assert np.allclose(out[:band], banded.min()) and np.allclose(out[:, -band:], banded.min())
    inner = slice(band + 2, h - band - 2), slice(band + 2, w - band - 2)
    assert np.array_equal(out[inner], banded[inner])
    assert remove_bands(phantom_image) is phantom_image
    white = np.pad(phantom_image, 20, constant_values=1.0)
    assert remove_bands(white)[:20].max() <= phantom_image.max() and remove_bands(white)[:20].max() == white.min()


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
    assert np.allclose(remove_bands(padded)[:20], phantom_image.min())


def test_an_inverted_padded_film_left_to_the_orientation_model_comes_back_as_the_clean_one(phantom_hands) -> None:
    # black padding, as a film fitted into a square has it: white once inverted, and cleaned as a band in that frame
    preprocessor = Preprocessor(PreprocessConfig(physical_polarity=False, small_angle=False))
    for sample in phantom_hands[:3]:
        padded = np.pad(sample.image[:, 16:-16], ((0, 0), (16, 16)))
        clean, inverted = preprocessor(padded), preprocessor(1.0 - padded)
        assert inverted.pose.inverted and not clean.pose.inverted
        assert np.abs(inverted.image - clean.image).mean() < 0.01
