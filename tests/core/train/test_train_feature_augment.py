"""Augmentation in feature space: the image augmentation's geometry, drawn per epoch, on cached maps."""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import pytest
import torch

from core.data import AugmentConfig
from core.train.feature_augment import augment_maps, inverse_maps, plain_view, sampling_grids

SIDE, CANVAS = 64, 74  # a view and the canvas its random crops come from (5 px either side)


def _blobs() -> np.ndarray:
    """A canvas with three blurred spots away from the centre (any misplaced rotation, zoom or shift moves them)."""
    canvas = np.zeros((CANVAS, CANVAS), dtype=np.float32)
    for x, y, value in ((20, 25, 1.0), (50, 18, 0.6), (44, 52, 0.8)):
        canvas[y, x] = value * 200.0
    return cv2.GaussianBlur(canvas, (0, 0), 2.5)


@pytest.mark.parametrize("angle, zoom, crop, flip", [(20.0, 1.1, (9, 2), True), (-12.0, 0.9, (0, 10), False),
                                                    (0.0, 1.0, (10, 0), False)])
def test_the_maps_move_as_the_image_augmentation_moves_the_image(angle: float, zoom: float, crop: tuple[int, int],
                                                                 flip: bool) -> None:
    canvas = _blobs()
    images = A.Compose([A.Affine(rotate=(angle, angle), scale=(zoom, zoom), border_mode=cv2.BORDER_CONSTANT, fill=0,
                                 p=1.0),
                        A.Crop(crop[0], crop[1], crop[0] + SIDE, crop[1] + SIDE),
                        A.HorizontalFlip(p=1.0 if flip else 0.0)])(image=canvas)["image"]
    margin = (CANVAS - SIDE) // 2
    plain = torch.from_numpy(canvas[margin:margin + SIDE, margin:margin + SIDE].copy()).reshape(1, -1)
    shift = (np.array([crop], dtype=np.float64) - margin) / (SIDE / 2)
    moved = augment_maps(plain, [(1, SIDE, SIDE)], inverse_maps(np.array([angle]), np.array([zoom]), shift,
                                                              np.array([flip]))).reshape(SIDE, SIDE).numpy()
    correlation = np.corrcoef(moved.ravel(), images.ravel())[0, 1]
    assert correlation > 0.97, correlation  # a wrong sign of the rotation, the shift or the flip gives < 0.6
    assert abs(moved.sum() - images.sum()) < 0.05 * images.sum()


def test_each_epoch_draws_its_own_augmentation_within_the_limits() -> None:
    augment = AugmentConfig(rotate_deg=10.0, scale=0.1)
    first, again, other = (sampling_grids(augment, 200, seed, epoch, 1.15) for seed, epoch in ((0, 1), (0, 1), (0, 2)))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert not torch.equal(first, sampling_grids(augment, 200, 1, 1, 1.15))
    linear = first[:, :, :2].double()
    zooms = 1.0 / torch.sqrt(torch.det(linear))  # no flip by default: a rotation over a zoom
    assert zooms.min() >= 0.9 - 1e-6 and zooms.max() <= 1.1 + 1e-6 and zooms.max() - zooms.min() > 0.15
    angles = torch.rad2deg(torch.atan2(linear[:, 1, 0], linear[:, 0, 0])).abs()
    assert angles.max() <= 10.0 + 1e-4 and angles.max() > 9.0
    shift = torch.linalg.solve(linear, first[:, :, 2:].double())  # the crop's offset, before the affine map
    assert shift.abs().max() <= 0.15 + 1e-6 and shift.abs().max() > 0.14
    steady = sampling_grids(AugmentConfig(rotate_deg=0.0, scale=0.0, crop=False), 5, 0, 1, 1.0)
    assert torch.allclose(steady, torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(5, 2, 3))
    flips = torch.det(sampling_grids(AugmentConfig(hflip=True), 200, 0, 1, 1.15)[:, :, :2])
    assert 60 < int((flips < 0).sum()) < 140


def test_vector_parts_are_left_as_they_are() -> None:
    flat = torch.randn(3, 5 + 2 * 4 * 4)
    grids = inverse_maps(np.full(3, 30.0), np.ones(3), np.zeros((3, 2)), np.zeros(3, dtype=bool))
    moved = augment_maps(flat, [(5,), (2, 4, 4)], grids)
    assert torch.equal(moved[:, :5], flat[:, :5]) and not torch.allclose(moved[:, 5:], flat[:, 5:])
