"""What on a radiograph is not anatomy: collimator bands, padding and burned-in markers, removed before equalisation.

- Bands: uniform bright bands along the edges (a collimator's unexposed border, `segment.collimation_box`) and
  constant bands of any level (black or white padding, a digital shutter, `segment.constant_box`) are set to the
  image's darkest level, as the exposed background usually is. CLAHE would otherwise spend its range on them.
  Which kind was removed is reported (`removed_bands`): a COLLIMATOR band (brighter than the film, in the
  bone-bright frame) may have cut the anatomy (the thumb, the finger tips), so the pipeline reads the pose of such a
  film more strictly; PADDING around a whole film (black frame, shutter) cuts nothing.
- Markers: a burned-in side marker or date is written flat at the brightest level, with a sharp step down to the
  film around it; the brightest spot of a bone is a peak that falls off gradually. Components within MARKER_LEVEL
  of the maximum, small against the image (at most MARKER_MAX_AREA of it), whose surrounding ring lies in the
  darker half of the range (MARKER_STEP), are in-painted from their surroundings (OpenCV's Navier-Stokes
  in-painting). A marker is text, not anatomy: the model must not read it as bone. A lead marker imaged through the
  detector below the top level, or text written over the hand, is left as it is.
Images without bands or markers come back unchanged.
"""

from __future__ import annotations

import cv2
import numpy as np

from core.preprocess.segment import WORK_SIDE, collimation_box, constant_box

MARKER_LEVEL = 0.1       # marker pixels are within this share of the range below the image's maximum (flat)
MARKER_STEP = 0.5        # ... and what surrounds them lies in the darker half of the range (film, not tissue)
MARKER_MAX_AREA = 0.02   # a marker component covers at most this share of the image
MARKER_MIN_PIXELS = 4    # fewer bright pixels together are noise, not a stroke


COLLIMATOR = "collimator"  # a uniform edge band brighter than the film was removed (an unexposed collimator border)
PADDING = "padding"        # a constant edge band not brighter than the film was removed (padding, a shutter)


def removed_bands(image: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    """Edge bands (bright uniform or constant at any level, found on a small copy) set to the darkest level, and
    which kinds were removed: COLLIMATOR when `segment.collimation_box` cut a side (a uniform band brighter than
    the film), PADDING when `segment.constant_box` cut a side further in (a constant band of another level).
    An image without bands comes back as the same object, with no kind."""
    h, w = image.shape
    ratio = min(1.0, WORK_SIDE / max(h, w))
    small = cv2.resize(image, (max(8, round(w * ratio)), max(8, round(h * ratio))), interpolation=cv2.INTER_AREA)
    full = (0, small.shape[0], 0, small.shape[1])
    bright, constant = collimation_box(small), constant_box(small)
    top, bottom = max(bright[0], constant[0]), min(bright[1], constant[1])
    left, right = max(bright[2], constant[2]), min(bright[3], constant[3])
    if (top, bottom, left, right) == full or bottom - top < 8 or right - left < 8:
        return image, ()
    kinds = (COLLIMATOR,) if bright != full else ()
    further = (constant[0] > bright[0], constant[1] < bright[1], constant[2] > bright[2], constant[3] < bright[3])
    kinds += (PADDING,) if any(further) else ()
    sy, sx = h / small.shape[0], w / small.shape[1]
    out = np.full_like(image, float(image.min()))
    t, b, l, r = round(top * sy), round(bottom * sy), round(left * sx), round(right * sx)
    out[t:b, l:r] = image[t:b, l:r]
    return out, kinds


def marker_mask(image: np.ndarray) -> np.ndarray:
    """Burned-in text and markers: flat at the brightest level, a sharp step down to what surrounds them, small
    (bool, the image's shape). The brightest spot of a bone is a peak that falls off gradually; noise clipped at
    the top level sits on bright bone, not on a step."""
    low, high = float(image.min()), float(image.max())
    top = (image >= high - MARKER_LEVEL * (high - low)).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(top, connectivity=8)
    mask = np.zeros(image.shape, dtype=bool)
    limit, step = MARKER_MAX_AREA * image.size, high - MARKER_STEP * (high - low)
    for label in range(1, count):
        x, y, w, h, area = stats[label]
        if not MARKER_MIN_PIXELS <= area <= limit:
            continue
        y0, x0 = max(0, y - 2), max(0, x - 2)
        window = labels[y0:y + h + 2, x0:x + w + 2] == label
        ring = cv2.dilate(window.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) & ~window
        if ring.any() and float(np.median(image[y0:y + h + 2, x0:x + w + 2][ring])) <= step:
            mask[y0:y + h + 2, x0:x + w + 2] |= window
    return mask


def inpaint_markers(image: np.ndarray) -> np.ndarray:
    """The image with `marker_mask`'s pixels (widened by one pixel) filled in from their surroundings."""
    mask = marker_mask(image)
    if not mask.any():
        return image
    mask = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8))
    radius = max(2, round(0.01 * max(image.shape)))
    # Navier-Stokes: OpenCV's Telea gives wrong values on float32 images
    filled = cv2.inpaint(np.ascontiguousarray(image, dtype=np.float32), mask, radius, cv2.INPAINT_NS)
    return np.clip(filled, 0.0, 1.0).astype(np.float32)
