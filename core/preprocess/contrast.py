"""Contrast equalisation: CLAHE on the hand, background kept black.

Contrast-limited adaptive histogram equalisation makes the grey levels of a bone depend on its rank among its
neighbours rather than on the scanner's exposure, gamma or window: two exposures of one hand come out alike.
"""

from __future__ import annotations

import cv2
import numpy as np


def equalize(image: np.ndarray, mask: np.ndarray | None, clip: float, tiles: int) -> np.ndarray:
    """CLAHE of a 2-D float image in [0, 1]; outside ``mask`` (when given) the result is 0.

    The image is stretched to 8 bits between its 0.5th and 99.5th percentiles inside the mask first, so a
    low-contrast image uses the whole range before equalisation (8 bits: what the model's input keeps anyway,
    and 16-bit CLAHE builds 65,536-bin histograms per tile, ten times slower).
    """
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
