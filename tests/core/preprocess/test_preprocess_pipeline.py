"""The pipeline with the packaged (phantom-trained) orientation model: canonical form, flags, refusals, regions."""

from __future__ import annotations

import numpy as np
import pytest

from core.preprocess import Pose, PreprocessConfig, Preprocessor, apply_pose
from core.preprocess.config import (INVERTED, LOW_CONFIDENCE, MIRRORED, NO_HAND, REGION_NAMES, ROTATED, TOO_SMALL,
                                    UNDEREXPOSED)

POSES = [Pose(1), Pose(2), Pose(3), Pose(0, mirrored=True), Pose(0, inverted=True), Pose(1, True, True),
         Pose(3, False, True), Pose(2, True, False)]


@pytest.fixture(scope="module")
def orientation_only() -> Preprocessor:
    return Preprocessor(PreprocessConfig(small_angle=False, equalize=False))


@pytest.mark.parametrize("pose", POSES, ids=str)
def test_a_turned_mirrored_or_inverted_phantom_comes_back_to_the_canonical_image(phantom_hands, orientation_only,
                                                                                 pose) -> None:
    for sample in phantom_hands[:3]:
        result = orientation_only(apply_pose(sample.image, pose))
        assert result.refused is None and result.pose == pose
        assert np.allclose(result.image, sample.image, atol=1e-6)
        expected = {ROTATED} if pose.quarter_turns else set()
        expected |= {MIRRORED} if pose.mirrored else set()
        expected |= {INVERTED} if pose.inverted else set()
        assert set(result.flags) & {ROTATED, MIRRORED, INVERTED} == expected


def test_a_canonical_phantom_is_left_alone_and_confidently(phantom_hands, orientation_only) -> None:
    for sample in phantom_hands:
        result = orientation_only(sample.image)
        assert result.pose == Pose() and result.flags == () and result.confidence > 0.6
        assert np.array_equal(result.image, sample.image)


def test_with_clahe_every_pose_gives_the_same_image(phantom_hands) -> None:
    preprocessor = Preprocessor(PreprocessConfig(small_angle=False))
    sample = phantom_hands[4]
    reference = preprocessor(sample.image).image
    for pose in POSES[:4]:
        assert np.abs(preprocessor(apply_pose(sample.image, pose)).image - reference).mean() < 0.01


def test_a_small_rotation_is_estimated_and_undone(phantom_hands) -> None:
    preprocessor = Preprocessor(PreprocessConfig(equalize=False))
    sample = phantom_hands[5]
    result = preprocessor(apply_pose(sample.image, Pose(0, False, False, 20.0)))
    assert ROTATED in result.flags and abs(result.pose.angle_deg - 20.0) < 8.0


def test_too_small_images_are_refused_with_their_size() -> None:
    result = Preprocessor(PreprocessConfig(canonical=False))(np.random.default_rng(0).random((20, 40)))
    assert result.flags == (TOO_SMALL,) and result.refused.startswith("too small (40x20 px")


def test_an_uncertain_orientation_is_refused(phantom_image) -> None:
    result = Preprocessor(PreprocessConfig(min_confidence=0.999999))(np.rot90(phantom_image).copy())
    assert LOW_CONFIDENCE in result.flags and result.refused.startswith("orientation uncertain")


def test_an_image_without_a_hand_is_refused_when_segmenting() -> None:
    flat = (0.3 + np.random.default_rng(0).normal(0, 0.002, (64, 64))).astype(np.float32)
    result = Preprocessor(PreprocessConfig(canonical=False, segment=True))(flat)
    assert NO_HAND in result.flags and result.refused.startswith("no hand found")


def test_an_underexposed_hand_is_flagged_not_refused(phantom_image) -> None:
    burnt = np.clip((phantom_image - 0.6) * 3, 0, 1).astype(np.float32)
    result = Preprocessor(PreprocessConfig(canonical=False))(burnt)
    assert UNDEREXPOSED in result.flags and result.refused is None


def test_registration_and_regions_on_a_phantom(phantom_hands) -> None:
    config = PreprocessConfig(canonical=False, segment=True, register=True, regions=True, output_size=96)
    result = Preprocessor(config)(phantom_hands[0].image)
    assert result.refused is None and result.image.shape == (96, 96)
    assert set(result.regions) == set(REGION_NAMES) and result.regions["carpal"].shape == (31, 38)
    assert "registration_failed" not in result.flags
    assert result.image[:3].max() < 0.05  # background above the finger tip (placed at 8 % of the height)


@pytest.mark.parametrize("fmt", ["dicom1", "jpeg", "png16"])
def test_a_full_size_non_square_file_in_each_format_comes_back_upright(phantom_image, tmp_path, fmt) -> None:
    import importlib.util
    from pathlib import Path

    import cv2

    from core.data import read_image

    spec = importlib.util.spec_from_file_location("data_sites", Path(__file__).parents[1] / "data" / "data_sites.py")
    data_sites = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(data_sites)
    film = np.pad(cv2.resize(phantom_image, (640, 640)), ((80, 80), (0, 0)), mode="edge")  # 800 x 640
    suffix = {"dicom1": "dcm", "jpeg": "jpg", "png16": "png"}[fmt]
    path = data_sites.write_image(tmp_path / f"film.{suffix}",
                                  apply_pose(film, Pose(3, True)), fmt)
    result = Preprocessor(PreprocessConfig(small_angle=False, equalize=False))(read_image(path))
    assert result.pose == Pose(3, True) and result.image.shape == (800, 640)
    assert np.abs(result.image - film).mean() < 0.02


def test_a_collimation_band_is_set_to_the_darkest_level(phantom_image) -> None:
    from core.preprocess.stress import collimation

    banded = collimation(phantom_image, np.random.default_rng(0), share=0.1)
    config = PreprocessConfig(canonical=False, equalize=False)
    out = Preprocessor(config)(banded).image
    assert out[:10].max() == banded.min() and np.array_equal(out[20:100, 20:100], banded[20:100, 20:100])
    assert np.array_equal(Preprocessor(config)(phantom_image).image, phantom_image)  # no band: unchanged


def test_a_half_size_film_is_equalised_like_the_full_size_one(phantom_hands) -> None:
    # CLAHE on 12 px tiles (a 50 px film, 4 tiles) clips a sparse histogram flat: it is equalised at 25 px per tile
    import cv2

    from core.preprocess.contrast import equalize

    errors = []
    for sample in phantom_hands:
        full = cv2.resize(sample.image, (100, 100), interpolation=cv2.INTER_AREA)
        half = cv2.resize(sample.image, (50, 50), interpolation=cv2.INTER_AREA)
        reference = cv2.resize(equalize(full, None, 2.0, 4), (50, 50), interpolation=cv2.INTER_AREA)
        out = equalize(half, None, 2.0, 4)
        assert out.shape == half.shape
        errors.append(np.abs(out - reference).mean())
    assert np.mean(errors) < 0.014  # 0.017 when the half-size film is equalised on its own 12 px tiles
