"""Which way round the grey levels are (bone bright or bone dark), from physical evidence rather than a CNN's vote.

Three pieces of evidence, strongest first:

1. The file's declaration: a DICOM's PhotometricInterpretation (MONOCHROME1 / MONOCHROME2) is undone when the file
   is read (`core.data.images`), so the image reaches preprocessing bone bright; nothing here may overrule it
   (`core.data.images.declares_polarity`).
2. The background: the exposed field around the hand received the most radiation and is the darkest part of a
   bone-bright image. The median of the image's middle half (mostly hand) is compared with the median of its border
   ring, taken inside any uniform edge bands (a collimator's unexposed border, black or white padding): those are
   not background, and a bright collimator band would otherwise pass for an inverted background.
3. Bone against soft tissue: bones and fingers are thin structures brighter than what surrounds them in a
   bone-bright image (white top-hat), and darker in an inverted one (black top-hat); their balance at the scale of
   a finger (5 % of the side) is the second score. Step edges (collimation, padding) add to neither.

Each score is in [-1, 1], positive for bone bright. The polarity is settled only when both scores agree and each is
clear of its margin; otherwise the evidence is undecided and the orientation model's inversion head votes. On
4,000 real and phantom images and their inverted copies (docs/preprocessing.md) the settled polarity was never
wrong on clean real radiographs; phantom films with tilted, noisy collimation are mostly left to the CNN.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from core.preprocess.segment import collimation_box, constant_box

WORK_SIDE = 128          # the evidence is read on a copy at most this many pixels on a side
RING = 3                 # border ring width, pixels of the working copy
TOPHAT_SHARE = 0.05      # structuring element of the top-hats: about a finger's width
BACKGROUND_MARGIN = 0.05  # |middle - ring| needed (grey levels of the stretched copy)
BONE_MARGIN = 0.06       # |white - black top-hat| / (white + black) needed


@dataclass(frozen=True)
class PolarityEvidence:
    """The two scores (positive: bone bright) and what they settle: True inverted, False bone bright, None unsure."""

    background: float
    bone: float

    @property
    def inverted(self) -> bool | None:
        if np.sign(self.background) != np.sign(self.bone):
            return None
        if abs(self.background) < BACKGROUND_MARGIN or abs(self.bone) < BONE_MARGIN:
            return None
        return bool(self.background < 0)


def _shrink(image: np.ndarray) -> np.ndarray:
    h, w = image.shape
    ratio = min(1.0, WORK_SIDE / max(h, w))
    return cv2.resize(np.asarray(image, dtype=np.float32), (max(8, round(w * ratio)), max(8, round(h * ratio))),
                      interpolation=cv2.INTER_AREA)


def _working_copy(image: np.ndarray) -> np.ndarray:
    """A copy of the image inside its constant padding, at most WORK_SIDE px a side, stretched to [0, 1]."""
    small = _shrink(image)
    top, bottom, left, right = constant_box(small)
    if (top, bottom, left, right) != (0, small.shape[0], 0, small.shape[1]) and bottom - top >= 8 \
            and right - left >= 8:  # cut at full resolution (the band's edge pixel blends padding: one more off)
        sy, sx = image.shape[0] / small.shape[0], image.shape[1] / small.shape[1]
        inset = (top > 0, bottom < small.shape[0], left > 0, right < small.shape[1])
        small = _shrink(image[round((top + inset[0]) * sy):round((bottom - inset[1]) * sy),
                              round((left + inset[2]) * sx):round((right - inset[3]) * sx)])
    low, high = float(small.min()), float(small.max())
    return (small - low) / max(high - low, 1e-6)


def _background_score(work: np.ndarray) -> float:
    top, bottom, left, right = collimation_box(work)
    inner = work[top:bottom, left:right] if bottom - top >= 8 and right - left >= 8 else work
    h, w = inner.shape
    ring = np.concatenate([inner[:RING].ravel(), inner[-RING:].ravel(), inner[:, :RING].ravel(),
                           inner[:, -RING:].ravel()])
    middle = inner[h // 4:3 * h // 4, w // 4:3 * w // 4]
    return float(np.median(middle) - np.median(ring))


def _bone_score(work: np.ndarray) -> float:
    smooth = cv2.medianBlur(np.ascontiguousarray(work), 3)  # noise adds to both top-hats
    k = max(3, round(TOPHAT_SHARE * max(work.shape)) | 1)
    element = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    white = float((smooth - cv2.morphologyEx(smooth, cv2.MORPH_OPEN, element)).sum())
    black = float((cv2.morphologyEx(smooth, cv2.MORPH_CLOSE, element) - smooth).sum())
    return (white - black) / max(white + black, 1e-9)


def polarity_evidence(image: np.ndarray) -> PolarityEvidence:
    """The background and bone scores of a 2-D image in [0, 1] (any size; about 1 ms)."""
    work = _working_copy(image)
    return PolarityEvidence(round(_background_score(work), 4), round(_bone_score(work), 4))


def settled_polarity(image: np.ndarray, declared: bool = False) -> bool | None:
    """True (inverted) or False (bone bright) when the file declared it (``declared``: bone bright after reading) or
    the physical evidence is clear; None when the orientation model's inversion head must vote."""
    return False if declared else polarity_evidence(image).inverted
