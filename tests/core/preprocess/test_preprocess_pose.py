"""Poses: applying and undoing quarter turns, mirroring, inversion and small angles."""

from __future__ import annotations

import numpy as np
import pytest

from core.preprocess import Pose, apply_pose, undo_pose


@pytest.mark.parametrize("turns", [0, 1, 2, 3])
@pytest.mark.parametrize("mirrored", [False, True])
@pytest.mark.parametrize("inverted", [False, True])
def test_undo_pose_returns_the_canonical_image_exactly_without_a_small_angle(phantom_image, turns, mirrored,
                                                                              inverted) -> None:
    pose = Pose(turns, mirrored, inverted)
    observed = apply_pose(phantom_image, pose)
    if not pose.is_identity:
        assert not np.allclose(observed, phantom_image)
    assert np.allclose(undo_pose(observed, pose), phantom_image, atol=1e-6)


def test_a_small_angle_is_undone_up_to_interpolation_and_the_cut_corners(phantom_image) -> None:
    pose = Pose(1, True, False, 12.0)
    back = undo_pose(apply_pose(phantom_image, pose), pose)
    h, w = back.shape
    centre = (slice(h // 4, h - h // 4), slice(w // 4, w - w // 4))
    assert np.abs(back[centre] - phantom_image[centre]).mean() < 0.02


def test_quarter_turns_wrap_and_identity_is_recognised() -> None:
    assert Pose(5).quarter_turns == 1 and Pose().is_identity and not Pose(angle_deg=1.0).is_identity
