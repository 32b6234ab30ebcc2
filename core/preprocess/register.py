"""Key points from the hand mask, an affine into the standard position, and the region crops.

The seed's registration places the tip of the middle finger about 100 px below the top edge and the capitate about
480 px above the bottom edge of its frame. Here the key points come from the mask of a canonical (fingers up) hand:
the tip is the mask's highest point; the capitate sits at the base of the palm, found as the lowest row where the
mask is still at least PALM_WIDTH of its widest, on the mask's mid-line. A similarity transform (rotation, uniform
scale, translation) then puts the tip at TIP_Y and the capitate at CAPITATE_Y of an ``output_size`` square.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

TIP_Y = 0.08
CAPITATE_Y = 0.70
PALM_WIDTH = 0.75
MIN_AXIS_SHARE = 0.25   # tip-capitate distance below this share of the image height: registration failed
MAX_TILT_DEG = 35.0     # axis further than this from vertical after canonicalisation: registration failed
# With a learned localiser: its wrist (carpal centre, where the capitate sits) and third MCP joint, placed where the
# mask registration puts the capitate and where the MCP joints fall in the metacarpal-phalanges zone.
WRIST_Y = CAPITATE_Y
MCP3_Y = 0.44
MIN_LOCALISED_AXIS = 0.15  # wrist-MCP3 distance below this share of the image height: registration failed

# Regions as (top, bottom, left, right) shares of the registered square (Gilsanz & Ratib's zones as in the seed).
REGION_BOXES = {
    "whole_hand": (0.0, 1.0, 0.0, 1.0),
    "carpal": (0.55, 0.88, 0.30, 0.70),
    "metacarpal_phalanges": (0.22, 0.64, 0.12, 0.88),
}


@dataclass(frozen=True)
class KeyPoints:
    """(x, y) pixels of the middle finger's tip and of the capitate's centre."""

    tip: tuple[float, float]
    capitate: tuple[float, float]

    @property
    def axis_length(self) -> float:
        return float(np.hypot(self.tip[0] - self.capitate[0], self.tip[1] - self.capitate[1]))

    @property
    def tilt_deg(self) -> float:
        """Angle of the capitate -> tip axis from straight up, counter-clockwise positive."""
        dx, dy = self.tip[0] - self.capitate[0], self.capitate[1] - self.tip[1]
        return float(np.degrees(np.arctan2(-dx, dy)))


def keypoints_from_mask(mask: np.ndarray) -> KeyPoints | None:
    """Tip and capitate of a canonical hand's mask, or None when the mask is empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size < 4:
        return None
    top = int(rows[0])
    tip = (float(np.flatnonzero(mask[top]).mean()), float(top))
    widths = mask.sum(axis=1).astype(np.float32)
    palm_rows = np.flatnonzero(widths >= PALM_WIDTH * widths.max())
    base = int(palm_rows[-1])
    columns = np.flatnonzero(mask[base])
    capitate = (float(columns.mean()), float(base))
    return KeyPoints(tip, capitate)


def registration_matrix(points: KeyPoints, size: int, top_y: float = TIP_Y, bottom_y: float = CAPITATE_Y
                        ) -> np.ndarray:
    """2x3 similarity mapping ``points.tip`` to (size/2, top_y*size) and ``points.capitate`` to (size/2,
    bottom_y*size); the defaults are the mask's tip and capitate, `localised_keypoints` gives MCP3 and wrist."""
    source = np.array([points.tip, points.capitate], dtype=np.float64)
    target = np.array([[size / 2.0, top_y * size], [size / 2.0, bottom_y * size]])
    src_vec, dst_vec = source[1] - source[0], target[1] - target[0]
    scale = np.linalg.norm(dst_vec) / max(np.linalg.norm(src_vec), 1e-6)
    angle = np.arctan2(dst_vec[1], dst_vec[0]) - np.arctan2(src_vec[1], src_vec[0])
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    linear = np.array([[c, -s], [s, c]])
    offset = target[0] - linear @ source[0]
    return np.hstack([linear, offset[:, None]]).astype(np.float32)


def plausible(points: KeyPoints | None, image_height: int, min_axis_share: float = MIN_AXIS_SHARE) -> bool:
    """Whether the key points describe an upright hand of sensible size."""
    return (points is not None and points.axis_length >= min_axis_share * image_height
            and abs(points.tilt_deg) <= MAX_TILT_DEG)


def localised_keypoints(mcp3: tuple[float, float], wrist: tuple[float, float]) -> KeyPoints:
    """The localiser's third MCP joint and wrist (pixels) in the roles of the axis's top and bottom."""
    return KeyPoints(tip=mcp3, capitate=wrist)


def warp(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """Apply a 2x3 affine into a ``size`` square, background black."""
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=0.0)


def crop_to_mask(image: np.ndarray, mask: np.ndarray, margin: float = 0.04) -> np.ndarray:
    """The bounding box of the mask with a margin (the fallback when registration fails)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return image
    h, w = image.shape
    pad_y, pad_x = round(margin * h), round(margin * w)
    return image[max(0, rows[0] - pad_y):min(h, rows[-1] + 1 + pad_y), max(0, cols[0] - pad_x):min(w, cols[-1] + 1 + pad_x)]


def region_crop(image: np.ndarray, name: str) -> np.ndarray:
    """One region crop (a name of REGION_BOXES) of a registered square image."""
    h, w = image.shape
    t, b, l, r = REGION_BOXES[name]
    return np.ascontiguousarray(image[round(t * h):round(b * h), round(l * w):round(r * w)])


def regions(image: np.ndarray) -> dict[str, np.ndarray]:
    """The three region crops of a registered square image."""
    return {name: region_crop(image, name) for name in REGION_BOXES}
