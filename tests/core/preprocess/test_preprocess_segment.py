"""Threshold segmentation, CLAHE and key points on phantom hands (whose true masks and key points are known)."""

from __future__ import annotations

import numpy as np

from core.preprocess.contrast import equalize
from core.preprocess.register import REGION_BOXES, keypoints_from_mask, regions
from core.preprocess.segment import collimation_box, hand_mask
from core.preprocess.stress import collimation, text_marker


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_the_mask_matches_the_phantom_hand(phantom_hands) -> None:
    ious = [_iou(hand_mask(s.image).mask, s.mask) for s in phantom_hands]
    assert min(ious) > 0.75, ious


def test_a_burned_in_marker_stays_out_of_the_mask(phantom_hands) -> None:
    sample = phantom_hands[1]
    marked = text_marker(sample.image, np.random.default_rng(0))
    segmentation = hand_mask(marked)
    ink = (marked == 1.0) & ~sample.mask
    assert segmentation.found and ink.sum() > 20 and not (segmentation.mask & ink).any()


def test_a_collimation_band_is_cut_before_thresholding(phantom_hands) -> None:
    sample = phantom_hands[1]
    segmentation = hand_mask(collimation(sample.image, np.random.default_rng(0), share=0.1))
    assert segmentation.box == (13, 115, 13, 115)
    assert _iou(segmentation.mask, sample.mask & _inside(segmentation.box)) > 0.75


def _inside(box: tuple[int, int, int, int]) -> np.ndarray:
    inside = np.zeros((128, 128), dtype=bool)
    inside[box[0]:box[1], box[2]:box[3]] = True
    return inside


def test_collimation_box_cuts_uniform_bands_only(phantom_image) -> None:
    assert collimation_box(phantom_image) == (0, 128, 0, 128)
    banded = collimation(phantom_image, np.random.default_rng(0), share=0.1)
    top, bottom, left, right = collimation_box(banded)
    assert (top, left) == (13, 13) and (bottom, right) == (115, 115)


def test_an_empty_image_has_no_hand() -> None:
    flat = np.full((64, 64), 0.3, dtype=np.float32) + np.random.default_rng(0).normal(0, 0.002, (64, 64))
    assert not hand_mask(flat.astype(np.float32)).found


def test_clahe_makes_two_exposures_alike_and_keeps_the_background_black(phantom_hands) -> None:
    sample = phantom_hands[2]
    bright, dark = sample.image, np.power(sample.image, 1.8)
    before = np.abs(bright - dark)[sample.mask].mean()
    after = np.abs(equalize(bright, sample.mask, 2.0, 4) - equalize(dark, sample.mask, 2.0, 4))[sample.mask].mean()
    assert after < before / 2
    assert (equalize(bright, sample.mask, 2.0, 4)[~sample.mask] == 0).all()


def test_key_points_from_the_mask_are_near_the_true_tip_and_capitate(phantom_hands) -> None:
    for sample in phantom_hands:
        points = keypoints_from_mask(sample.mask)
        tip, capitate = sample.keypoints[0], sample.keypoints[2]
        assert np.hypot(*(np.array(points.tip) - tip)) < 0.06 * 128
        assert np.hypot(*(np.array(points.capitate) - capitate)) < 0.15 * 128


def test_regions_are_the_documented_boxes() -> None:
    image = np.arange(100 * 100, dtype=np.float32).reshape(100, 100)
    cut = regions(image)
    assert set(cut) == set(REGION_BOXES) and cut["whole_hand"].shape == (100, 100)
    assert cut["carpal"].shape == (33, 40) and cut["carpal"][0, 0] == image[55, 30]
