"""Quality checks that need no model: image size and exposure."""

from __future__ import annotations

from typing import Callable

import numpy as np

from core.preprocess.config import OVEREXPOSED, TOO_SMALL, UNDEREXPOSED
from core.preprocess.segment import Segmentation


def size_flags(image: np.ndarray, min_side: int) -> tuple[tuple[str, ...], str | None]:
    """(flags, refusal reason or None) for an image whose shorter side may be below ``min_side``."""
    h, w = image.shape
    if min(h, w) < min_side:
        return (TOO_SMALL,), f"too small ({w}x{h} px, the shorter side needs at least {min_side})"
    return (), None


def exposure_flags(image: np.ndarray, mask: np.ndarray | None, clip_share: float,
                   hand_mask: Callable[[np.ndarray], Segmentation]) -> tuple[str, ...]:
    """Under-/over-exposed when at least ``clip_share`` of the hand sits at the darkest/brightest 2 % of the range.

    Read on the canonical (bone bright) image inside the hand: ``mask`` when the pipeline has one, else the mask
    ``hand_mask`` finds (the one the settings name, `pipeline.hand_masker`). A burnt-out film has the hand at the
    bottom of the range, a saturated detector has it at the top.
    """
    step = max(1, max(image.shape) // 256)  # the shares hardly change on every step-th pixel, and cost far less
    image = image[::step, ::step]
    mask = None if mask is None else mask[::step, ::step]
    if mask is None:
        segmentation = hand_mask(image)
        mask = segmentation.mask if segmentation.found else None
    if mask is None or not mask.any():  # no hand found: the central half of the image stands in for it
        h, w = image.shape
        mask = np.zeros(image.shape, dtype=bool)
        mask[h // 4:h - h // 4, w // 4:w - w // 4] = True
    inside = image[mask]
    low, high = float(image.min()), float(image.max())
    span = max(high - low, 1e-6)
    flags = []
    if float(np.mean(inside <= low + 0.02 * span)) >= clip_share:
        flags.append(UNDEREXPOSED)
    if float(np.mean(inside >= high - 0.02 * span)) >= clip_share:
        flags.append(OVEREXPOSED)
    return tuple(flags)
