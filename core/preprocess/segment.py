"""Hand segmentation without a learned model: collimation bands, a background threshold, the largest component.

1. Uniform bands along the edges (a collimator's unexposed border, a film edge) are cut off.
2. The background level is read from the remaining border ring (median and spread); pixels clearly above it are
   foreground. A closing joins the bones and soft tissue of one hand.
3. The largest connected component is the hand (with the forearm); markers, rulers and text, which do not touch
   it, are dropped. Holes are filled and the mask is widened a little so no bone edge is cut.
Work is done on a copy at most WORK_SIDE pixels on a side; the mask is returned at the input's size.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

WORK_SIDE = 128
BAND_STD = 0.02          # an edge row/column with BAND_SHARE of its pixels this close to its median is a band
BAND_SHARE = 0.9
BAND_BRIGHTER = 0.05     # ... and its median this much above the image's median
MAX_BAND_SHARE = 0.3     # at most this share of each side is cut as a band
CONSTANT_TOL = 1.0 / 255  # an edge row/column with nearly all pixels this close to its median is padding
CONSTANT_SHARE = 0.98
MAX_CONSTANT_SHARE = 0.45  # at most this share of each side is cut as constant padding
MIN_HAND_SHARE = 0.04    # a largest component below this share of the image is "no hand"
MAX_HAND_SHARE = 0.97    # ... and above it the threshold failed (everything is "hand")


@dataclass(frozen=True)
class Segmentation:
    """The hand mask (bool, input size) and the crop box (top, bottom, left, right) that removes edge bands."""

    mask: np.ndarray
    box: tuple[int, int, int, int]
    share: float

    @property
    def found(self) -> bool:
        return MIN_HAND_SHARE <= self.share <= MAX_HAND_SHARE


def _run(flags: np.ndarray, limit: int) -> int:
    """Length of the leading run of True in ``flags``, at most ``limit``."""
    n = 0
    while n < limit and flags[n]:
        n += 1
    return n


def _band(lines: np.ndarray, level: float) -> np.ndarray:
    """Per line (row of ``lines``): BAND_SHARE of its pixels within BAND_STD of its median, and brighter than
    ``level`` (an unexposed band is brighter than the exposed background; a dark background is not a band)."""
    median = np.median(lines, axis=1, keepdims=True)
    uniform = np.mean(np.abs(lines - median) < BAND_STD, axis=1) >= BAND_SHARE
    return uniform & (median[:, 0] > level)


def collimation_box(image: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) such that image[top:bottom, left:right] has no uniform edge band."""
    h, w = image.shape
    level = float(np.median(image)) + BAND_BRIGHTER
    rows, cols = _band(image, level), _band(image.T, level)

    top = _run(rows, int(MAX_BAND_SHARE * h))
    bottom = h - _run(rows[::-1], int(MAX_BAND_SHARE * h))
    left = _run(cols, int(MAX_BAND_SHARE * w))
    right = w - _run(cols[::-1], int(MAX_BAND_SHARE * w))
    return top, bottom, left, right


def constant_box(image: np.ndarray, tol: float = CONSTANT_TOL,
                 max_share: float = MAX_CONSTANT_SHARE) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) inside the constant edge bands of any level (padding, digital collimation masks).

    A row or column is constant when CONSTANT_SHARE of its pixels lie within ``tol`` of its median; at most
    ``max_share`` of each side is cut. Symmetric under turns and mirroring, and under inversion.
    """
    h, w = image.shape

    def constant(lines: np.ndarray) -> np.ndarray:
        median = np.median(lines, axis=1, keepdims=True)
        return np.mean(np.abs(lines - median) <= tol, axis=1) >= CONSTANT_SHARE

    rows, cols = constant(image), constant(image.T)
    top, bottom = _run(rows, int(max_share * h)), h - _run(rows[::-1], int(max_share * h))
    left, right = _run(cols, int(max_share * w)), w - _run(cols[::-1], int(max_share * w))
    return top, bottom, left, right


def _threshold(work: np.ndarray) -> np.ndarray:
    ring = np.concatenate([work[:2].ravel(), work[-2:].ravel(), work[:, :2].ravel(), work[:, -2:].ravel()])
    level = float(np.median(ring))
    spread = float(np.median(np.abs(ring - level))) * 1.4826
    high = float(np.percentile(work, 99))
    cut = level + max(3.0 * spread, 0.12 * (high - level))
    return work > cut


def hand_mask(image: np.ndarray) -> Segmentation:
    """Segment the hand in a canonical-polarity (bone bright) 2-D image in [0, 1]."""
    h, w = image.shape
    ratio = min(1.0, WORK_SIDE / max(h, w))
    small = cv2.resize(image, (max(8, round(w * ratio)), max(8, round(h * ratio))), interpolation=cv2.INTER_AREA)
    s_top, s_bottom, s_left, s_right = collimation_box(small)
    sy, sx = h / small.shape[0], w / small.shape[1]
    top, bottom, left, right = round(s_top * sy), round(s_bottom * sy), round(s_left * sx), round(s_right * sx)
    work = cv2.medianBlur(np.ascontiguousarray(small[s_top:s_bottom, s_left:s_right]), 3)  # noise, 1-px strokes
    foreground = _threshold(work).astype(np.uint8)
    # opening removes thin strokes (text, ruler ticks); the largest component is taken before closing, so a
    # marker near a finger is not joined to the hand
    foreground = cv2.morphologyEx(foreground, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(foreground, connectivity=4)
    mask = np.zeros_like(foreground)
    if count > 1:
        largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        mask = (labels == largest).astype(np.uint8)
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
        mask = fill_holes(mask)
        mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)))
    share = float(mask.mean())
    full = np.zeros((h, w), dtype=bool)
    full[top:bottom, left:right] = cv2.resize(mask, (right - left, bottom - top),
                                              interpolation=cv2.INTER_NEAREST).astype(bool)
    return Segmentation(full, (top, bottom, left, right), share)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """The mask (uint8) with every region it encloses (not reachable from the border) filled."""
    padded = np.pad(mask, 1)
    flood = padded.copy()
    cv2.floodFill(flood, None, (0, 0), 1)
    holes = (flood == 0)[1:-1, 1:-1]
    return (mask.astype(bool) | holes).astype(np.uint8)
