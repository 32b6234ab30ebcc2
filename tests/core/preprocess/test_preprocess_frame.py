"""Photographed films (`core.preprocess.frame`): found in any pose and polarity, never on ordinary phantom films."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import cv2
import numpy as np
import pytest
from PIL import Image

from core.preprocess import PreprocessConfig, Preprocessor
from core.preprocess.frame import INSET, film_box, film_only
from core.preprocess.orientation import OrientationModel
from core.preprocess.pose import Pose, apply_pose
from core.preprocess.site import _read
from sim.phantom.profiles import PRESETS, ProfileError
from sim.phantom.synth import synthesize

SIDE = 128


def photographed(index: int, preset: str = "rsna"):
    """A photographed phantom film (not collimated: a photographed collimated film, whose film is mostly the
    collimator's bright border, may be left as it is, which is the safe side)."""
    base = PRESETS[preset].with_image_size(SIDE)
    profile = replace(base, scanner=replace(base.scanner, inverted_fraction=0.0),
                      acquisition=replace(base.acquisition, photographed_fraction=1.0, collimation_fraction=0.0))
    return synthesize(profile, seed=5, index=index)


def test_a_photographed_phantom_keeps_its_hand_inside_the_film() -> None:
    sample = photographed(0)
    surround = np.median(np.concatenate([sample.image[:3].ravel(), sample.image[-3:].ravel()]))
    assert surround < 0.25 and sample.image[sample.mask].mean() > surround + 0.2
    cols, rows = np.rint(sample.keypoints).astype(int).T
    assert sample.mask[rows, cols].all()  # the key points moved with the film
    ordinary = synthesize(PRESETS["rsna"].with_image_size(SIDE), seed=5, index=0)
    assert not np.array_equal(ordinary.image, synthesize(replace(
        PRESETS["rsna"].with_image_size(SIDE), acquisition=replace(PRESETS["rsna"].acquisition,
                                                                   photographed_fraction=1.0)), seed=5, index=0).image)


@pytest.mark.parametrize("pose", [Pose(), Pose(1), Pose(2, True), Pose(3, False, True), Pose(0, True, True)])
def test_the_film_is_found_in_every_pose_and_polarity(pose: Pose) -> None:
    for index in range(6):
        sample = photographed(index, ("rsna", "rural_cr", "tongji")[index % 3])
        image = apply_pose(sample.image, pose)
        film = film_box(image)
        assert film is not None, f"photographed film {index} not found in pose {pose}"
        # every key point of the hand lies inside the film found
        points = apply_pose_points(sample.keypoints, pose)
        assert inside(points, film.corners).all()
        cut = film_only(image)
        assert cut.shape[0] < 0.9 * SIDE and cut.shape[1] < 0.9 * SIDE


def apply_pose_points(points: np.ndarray, pose: Pose) -> np.ndarray:
    """Key points (x, y) carried through `apply_pose` by marking them in an image."""
    marks = np.zeros((SIDE, SIDE), dtype=np.float32)
    out = []
    for x, y in np.rint(points).astype(int):
        marks[:] = 0
        marks[y, x] = 1.0
        posed = apply_pose(marks, Pose(pose.quarter_turns, pose.mirrored))
        row, col = np.unravel_index(np.argmax(posed), posed.shape)
        out.append((col, row))
    return np.array(out, dtype=np.float32)


def inside(points: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """Whether each point lies in the convex quadrilateral `corners` (either winding)."""
    signs = []
    for a, b in zip(corners, np.roll(corners, -1, axis=0)):
        signs.append((b[0] - a[0]) * (points[:, 1] - a[1]) - (b[1] - a[1]) * (points[:, 0] - a[0]))
    signs = np.array(signs)
    return (signs >= 0).all(axis=0) | (signs <= 0).all(axis=0)


def test_the_cut_film_has_no_surround_left() -> None:
    sample = photographed(1)
    cut = film_only(sample.image)
    surround = float(np.median(sample.image[:3]))
    assert (np.abs(cut - surround) < 0.05).mean() < 0.02  # the surround's level is gone
    assert INSET > 0


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_ordinary_phantom_films_are_never_taken_for_photographs(preset: str) -> None:
    """Every preset as it is (collimated, marked, turned, mirrored, inverted films among them), in four poses."""
    profile = PRESETS[preset].with_image_size(SIDE)
    for index in range(10):
        sample = synthesize(profile, seed=2, index=index)
        image = 1.0 - sample.image if sample.inverted else sample.image
        for pose in (Pose(), Pose(1), Pose(2, True), Pose(0, False, True)):
            posed = apply_pose(image, pose)
            assert film_box(posed) is None, f"{preset} film {index} in pose {pose} taken for a photograph"
            assert film_only(posed) is posed


def test_the_site_fit_reads_photographed_films_cut_and_only_their_cut_changes_the_cache_key(tmp_path) -> None:
    plain, photo = synthesize(PRESETS["rsna"].with_image_size(SIDE), seed=5, index=0), photographed(0)
    paths = []
    for name, image in (("plain", plain.image), ("photo", photo.image)):
        path = tmp_path / f"{name}.png"
        Image.fromarray(np.uint8(np.rint(image * 255))).save(path)
        paths.append(path)
    images, digest = _read(paths)
    assert images[0].shape == (SIDE, SIDE) and max(images[1].shape) < 0.9 * SIDE

    def files_only(chosen: list) -> str:  # the key as it was before films were cut
        return hashlib.sha256(b"".join(p.name.encode() + b"\0" + p.read_bytes() for p in chosen)).hexdigest()

    assert _read(paths[:1])[1] == files_only(paths[:1])  # a folder without photographs keeps its cached fits
    assert digest != files_only(paths)  # one with a photograph is fitted afresh on what the model now sees


def test_the_pipeline_shows_the_orientation_model_the_cut_film(monkeypatch) -> None:
    seen: list[tuple[int, int]] = []
    original = OrientationModel.predict_checked

    def spy(self, image, polarity=None):
        seen.append(image.shape)
        return original(self, image, polarity)

    monkeypatch.setattr(OrientationModel, "predict_checked", spy)
    preprocessor = Preprocessor(PreprocessConfig())
    photo = photographed(2).image
    result = preprocessor(photo)
    assert max(seen[-1]) < 0.9 * SIDE  # the film, not the photograph
    assert result.image.shape == photo.shape or result.refused  # what the model reads keeps the input's geometry
    ordinary = synthesize(PRESETS["rsna"].with_image_size(SIDE), seed=5, index=0).image
    preprocessor(ordinary)
    assert seen[-1] == ordinary.shape


def test_the_photographed_share_is_checked() -> None:
    with pytest.raises(ProfileError, match="photographed_fraction"):
        replace(PRESETS["rsna"].acquisition, photographed_fraction=1.5)


def test_a_large_film_is_found_where_its_small_copy_is() -> None:
    image = photographed(3).image
    large = cv2.resize(image, (4 * SIDE, 4 * SIDE), interpolation=cv2.INTER_LINEAR)
    small_film, large_film = film_box(image), film_box(large)
    assert small_film is not None and large_film is not None
    assert np.abs(large_film.corners - 4 * small_film.corners).max() < 0.03 * 4 * SIDE
