"""Films photographed in their frame: the film cut out of the surface it lies on before the orientation model looks.

Some sites send a photograph of the film on a light box or a table instead of a scan: a lighter rectangle, often
tilted, on a grey surround, with the hand inside it. The film's straight edges and the surround are not anatomy
and confuse the orientation model (on rsna100's first 100 training films, 12 of the 16 films a site-fitted model
disagreed with itself on most were photographed). `film_box` finds such a film:

1. the surround is what touches the image's border at the border ring's level (within SURROUND_TOL of the range
   between the ring's level and the film's), and it covers most of the ring (MIN_RING_SHARE);
2. the rest, holes filled, is one region whose minimum-area rectangle it fills almost entirely (MIN_FILL): a
   film's outline is a rectangle, a hand's (with the forearm) never is;
3. the film covers between MIN_FILM_SHARE and MAX_FILM_SHARE of the image, and its edge differs from the surround
   by at least MIN_STEP of the image's range;
4. the surround lies on the other side of the film's level than the hand does: a bone-bright photograph is a
   lighter film on a darker surround, an inverted one a darker film on a lighter surround, while a collimator's
   unexposed border lies on the hand's side (brighter than the exposed field in a bone-bright film, darker in an
   inverted one) and is left to `core.preprocess.field`.

`film_only` then crops the image to the film's bounding box (its edge line left out, INSET) and fills what lies
outside the (tilted) film with the film's own level along its edge, so the orientation model sees a film as a
scanner would give it, with no edges of its own. Ordinary films (no uniform surround all around, or a region that
is not a rectangle) come back unchanged. Work is done on a copy at most WORK_SIDE pixels on a side. The image the
pipeline equalises and the model reads is not changed: only the orientation model's view of it (the pose found
applies to the whole image).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from core.preprocess.segment import WORK_SIDE, constant_box

RING_SHARE = 0.03       # the border ring is this share of each side (at least 2 px)
SURROUND_TOL = 0.35     # surround pixels lie within this share of the ring-to-film step of the ring's level
MIN_RING_SHARE = 0.75   # the surround covers at least this share of the border ring
MIN_FILL = 0.92         # the film fills at least this share of its minimum-area rectangle
MIN_FILM_SHARE = 0.15   # the film covers at least this share of the image ...
MAX_FILM_SHARE = 0.92   # ... and at most this (else there is no surround to speak of)
MIN_STEP = 0.08         # the film's edge level differs from the surround's by at least this share of the range
INSET = 0.03            # the film's edge itself (a bright or dark line) is left out: this share of each side


@dataclass(frozen=True)
class Film:
    """A photographed film: its corners (4, 2) as (x, y) in the input image's pixels and its level along its edge."""

    corners: np.ndarray
    level: float


def _small(image: np.ndarray) -> tuple[np.ndarray, float]:
    h, w = image.shape
    ratio = min(1.0, WORK_SIDE / max(h, w))
    size = (max(8, round(w * ratio)), max(8, round(h * ratio)))
    return cv2.resize(np.asarray(image, dtype=np.float32), size, interpolation=cv2.INTER_AREA), w / size[0]


def _ring(shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    k = max(2, round(RING_SHARE * min(h, w)))
    ring = np.zeros(shape, dtype=bool)
    ring[:k], ring[-k:], ring[:, :k], ring[:, -k:] = True, True, True, True
    return ring


def film_box(image: np.ndarray) -> Film | None:
    """The photographed film in ``image`` (2-D, any polarity), or None when the image is not a photographed film.
    Constant edge bands (padding) are left aside first, as the orientation model's input leaves them."""
    small, scale = _small(image)
    top, bottom, left, right = constant_box(small)
    if bottom - top < 8 or right - left < 8:
        return None
    work = cv2.GaussianBlur(np.ascontiguousarray(small[top:bottom, left:right]), (0, 0), 1.0)
    h, w = work.shape
    ring = _ring(work.shape)
    level = float(np.median(work[ring]))
    inner = work[h // 4: h - h // 4, w // 4: w - w // 4]
    film_level = float(np.median(inner))  # the film (and hand) at the centre, a step away from the surround
    step = film_level - level
    span = float(np.percentile(work, 99.5) - np.percentile(work, 0.5))
    if span <= 0 or abs(step) < MIN_STEP * span:
        return None
    near = (np.abs(work - level) <= SURROUND_TOL * abs(step)).astype(np.uint8)
    _, labels = cv2.connectedComponents(near, connectivity=4)
    touching = np.unique(labels[ring & (near > 0)])
    surround = np.isin(labels, touching[touching > 0])
    if surround[ring].mean() < MIN_RING_SHARE:
        return None
    rest = (~surround).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(rest, connectivity=4)
    if count < 2:
        return None
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    region = (labels == largest).astype(np.uint8)
    contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    outline = max(contours, key=cv2.contourArea)
    filled = np.zeros_like(region)
    cv2.drawContours(filled, [outline], -1, 1, thickness=-1)
    area = float(filled.sum())
    (cx, cy), (rw, rh), angle = cv2.minAreaRect(outline)
    if not MIN_FILM_SHARE <= area / (h * w) <= MAX_FILM_SHARE or area < MIN_FILL * rw * rh:
        return None
    edge = filled.astype(bool) & ~cv2.erode(filled, np.ones((5, 5), np.uint8)).astype(bool)
    edge_level = float(np.median(work[edge]))
    if abs(edge_level - level) < MIN_STEP * span:
        return None
    interior = work[cv2.erode(filled, np.ones((7, 7), np.uint8)).astype(bool)]
    if interior.size == 0:
        return None
    low, middle, high = np.percentile(interior, [10, 50, 90])  # the film's own level is its bulk, the hand its tail
    hand_side = (high - middle) - (middle - low)  # > 0: the hand is brighter than the film around it
    if hand_side * (level - middle) >= 0:  # the surround on the hand's side of the film: a collimator's border
        return None
    inset = ((cx, cy), (rw * (1 - 2 * INSET), rh * (1 - 2 * INSET)), angle)
    corners = (cv2.boxPoints(inset) + np.array([left, top], dtype=np.float32)) * scale
    return Film(corners=corners.astype(np.float32), level=edge_level)


def film_only(image: np.ndarray) -> np.ndarray:
    """The photographed film of ``image`` cropped to its bounding box, what lies outside it set to its edge level;
    ``image`` itself (the same object) when it is not a photographed film."""
    film = film_box(image)
    if film is None:
        return image
    h, w = image.shape
    left, top = np.floor(film.corners.min(axis=0)).astype(int)
    right, bottom = np.ceil(film.corners.max(axis=0)).astype(int)
    left, top, right, bottom = max(0, left), max(0, top), min(w, right), min(h, bottom)
    if right - left < 8 or bottom - top < 8:
        return image
    inside = np.zeros((h, w), dtype=np.uint8)
    cv2.fillConvexPoly(inside, np.round(film.corners).astype(np.int32), 1)
    out = np.where(inside > 0, image, np.float32(film.level)).astype(np.float32)
    return np.ascontiguousarray(out[top:bottom, left:right])
