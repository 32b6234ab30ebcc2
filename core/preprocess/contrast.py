"""Contrast equalisation: CLAHE on the hand, background kept black.

Contrast-limited adaptive histogram equalisation makes the grey levels of a bone depend on its rank among its
neighbours rather than on the scanner's exposure, gamma or window: two exposures of one hand come out alike.
"""

from __future__ import annotations

import cv2
import numpy as np

# CLAHE's clip limit is a count per grey level of a tile's histogram: a tile of a few hundred pixels has a sparse,
# clipped-flat histogram and is equalised differently from a tile of the same hand at twice the resolution (a
# 50 px film read 4 months further off than the 100 px one). Images whose tiles would be narrower than this are
# equalised on an upsampled copy; the 100 px images the project is developed on (4 tiles) are unchanged.
MIN_TILE_SIDE = 25


def equalize(image: np.ndarray, mask: np.ndarray | None, clip: float, tiles: int) -> np.ndarray:
    """CLAHE of a 2-D float image in [0, 1]; outside ``mask`` (when given) the result is 0.

    The image is stretched to 8 bits between its 0.5th and 99.5th percentiles inside the mask first, so a
    low-contrast image uses the whole range before equalisation (8 bits: what the model's input keeps anyway,
    and 16-bit CLAHE builds 65,536-bin histograms per tile, ten times slower). An image whose shorter side is below
    ``tiles * MIN_TILE_SIDE`` is equalised at that side and brought back to its own size.
    """
    h, w = image.shape
    side = tiles * MIN_TILE_SIDE
    if min(h, w) >= side:
        return _clahe(image, mask, clip, tiles)
    ratio = side / min(h, w)
    size = (round(w * ratio), round(h * ratio))
    larger = np.clip(cv2.resize(image, size, interpolation=cv2.INTER_CUBIC), 0.0, 1.0)
    larger_mask = None if mask is None else \
        cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
    out = cv2.resize(_clahe(larger, larger_mask, clip, tiles), (w, h), interpolation=cv2.INTER_AREA)
    if mask is not None:
        out[~mask] = 0.0
    return out


def _clahe(image: np.ndarray, mask: np.ndarray | None, clip: float, tiles: int) -> np.ndarray:
    step = max(1, max(image.shape) // 256)  # percentiles of every step-th pixel: the same levels, far faster
    sample, sample_mask = image[::step, ::step], None if mask is None else mask[::step, ::step]
    inside = sample[sample_mask] if sample_mask is not None and sample_mask.any() else sample.ravel()
    low, high = np.percentile(inside, [0.5, 99.5])
    if high <= low:
        low, high = float(image.min()), float(image.max()) + 1e-6
    scaled = np.clip((image - low) / (high - low), 0.0, 1.0)
    clahe = cv2.createCLAHE(clipLimit=clip, tileGridSize=(tiles, tiles))
    out = clahe.apply(np.rint(scaled * 255.0).astype(np.uint8)).astype(np.float32) / 255.0
    if mask is not None:
        out[~mask] = 0.0
    return out
