"""Placement on the detector and the scanner's grey-level chain: exposure, gamma, heel effect,
collimation, burned-in markers, blur and noise. All in the final pixel geometry (x = column, y = row).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.phantom.anatomy import Hand
from sim.phantom.profiles import AcquisitionProfile, ScannerProfile

ANCHOR = np.array([0.0, 0.40])   # hand-frame point placed at the image centre (mid-palm)
REFERENCE_LENGTH_CM = 18.25      # hand length that fills ``AcquisitionProfile.fill`` of the side
MARGIN = 0.04                    # key points are kept this fraction of the side inside the image
TRIANGULAR_SD = float(np.sqrt(2.0 * (256**2 - 1) / 12.0))  # SD of the sum of two uniform bytes


@dataclass(frozen=True)
class Placement:
    """Similarity from the hand frame to pixels (p -> matrix @ p + offset) and what it did."""

    matrix: np.ndarray
    offset: np.ndarray
    mirrored: bool

    @property
    def scale(self) -> float:
        """Pixels per hand length."""
        return float(np.sqrt(abs(np.linalg.det(self.matrix))))

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Map (N, 2) hand-frame points to pixel coordinates."""
        return points @ self.matrix.T + self.offset


def place(hand: Hand, acq: AcquisitionProfile, size: int, rng: np.random.Generator) -> Placement:
    """Scale (children's hands are smaller), rotate, mirror and shift the hand onto a ``size`` image."""
    scale = acq.fill * size * np.sqrt(hand.length_cm / REFERENCE_LENGTH_CM) * (1.0 + rng.normal(0.0, acq.scale_jitter))
    theta = np.radians(rng.uniform(-acq.rotation_deg, acq.rotation_deg))
    if rng.random() < acq.rotation_90_fraction:
        theta += np.pi / 2 * rng.choice([-1.0, 1.0])
    mirrored = bool(rng.random() < acq.mirror_fraction)
    c, s = np.cos(theta), np.sin(theta)
    flip = np.diag([-1.0 if mirrored else 1.0, -1.0])  # hand y points up, image rows point down
    matrix = scale * np.array([[c, -s], [s, c]]) @ flip
    centre = size / 2.0 + rng.uniform(-acq.translate, acq.translate, size=2) * size
    offset = centre - matrix @ ANCHOR
    points = hand.keypoints @ matrix.T + offset
    lo, hi = MARGIN * size, (1.0 - MARGIN) * size - 1.0
    offset = offset + np.clip(lo - points.min(axis=0), 0.0, None) - np.clip(points.max(axis=0) - hi, 0.0, None)
    return Placement(matrix=matrix, offset=offset, mirrored=mirrored)


def expose(bone: np.ndarray, soft: np.ndarray, pixels_per_hand: float, scanner: ScannerProfile,
           rng: np.random.Generator) -> np.ndarray:
    """Grey level in [0, 1] (bone bright) from projected bone and soft-tissue path lengths."""
    size = bone.shape[0]
    exposure = scanner.exposure * max(0.3, 1.0 + float(rng.normal(0.0, scanner.exposure_jitter)))
    background = float(np.clip(scanner.background + rng.normal(0.0, scanner.background_jitter), 0.0, 0.7))
    attenuation = soft + scanner.contrast * bone
    attenuation *= -exposure / pixels_per_hand
    signal = np.exp(attenuation, out=attenuation)
    np.subtract(1.0, signal, out=signal)
    if scanner.gamma != 1.0:
        signal **= scanner.gamma
    direction = rng.normal(size=2)
    gain = (1.0 - background) * scanner.heel / float(np.linalg.norm(direction))
    ramp = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    heel = (1.0 - background) + (float(direction[0]) * gain * ramp)[None, :] + (float(direction[1]) * gain * ramp)[:, None]
    signal *= heel
    signal += background
    return signal


def collimate(image: np.ndarray, mask: np.ndarray, keypoints: np.ndarray, acq: AcquisitionProfile,
              rng: np.random.Generator) -> None:
    """Replace everything outside a slightly rotated rectangular field by a flat level, in place.

    The field always contains the key points; the mask is cut to the field (what is visible).
    """
    size = image.shape[0]
    angle = np.radians(rng.normal(0.0, 4.0))
    c, s = np.cos(angle), np.sin(angle)
    centre = keypoints.mean(axis=0)
    rot = np.array([[c, s], [-s, c]])
    local = (keypoints - centre) @ rot.T
    lo = local.min(axis=0) - rng.uniform(0.08, 0.3, size=2) * size
    hi = local.max(axis=0) + rng.uniform(0.08, 0.3, size=2) * size
    grid = np.arange(size, dtype=np.float32)
    u = (grid[None, :] - centre[0]) * c + (grid[:, None] - centre[1]) * s
    v = -(grid[None, :] - centre[0]) * s + (grid[:, None] - centre[1]) * c
    outside = (u < lo[0]) | (u > hi[0]) | (v < lo[1]) | (v > hi[1])
    image[outside] = acq.collimation_level + rng.normal(0.0, 0.03)
    mask &= ~outside


def burn_marker(image: np.ndarray, mask: np.ndarray, letter: str, rng: np.random.Generator) -> None:
    """Burn an "L"/"R" lead marker (bright glyph on a dark tag) and a text strip into the emptiest corner."""
    size = image.shape[0]
    box = max(int(0.1 * size), 6)
    corners = [(r, c) for r in (2, size - box - 2) for c in (2, size - box - 2)]
    overlap = [mask[r:r + box, c:c + box].sum() + rng.random() for r, c in corners]
    r, c = corners[int(np.argmin(overlap))]
    bar = max(box // 6, 1)
    image[r:r + box, c:c + box] = rng.uniform(0.0, 0.15)
    glyph = image[r + bar:r + box - bar, c + bar:c + box - bar]
    h, w = glyph.shape
    level = rng.uniform(0.85, 1.0)
    glyph[:, :bar] = level                                  # the stem of L and R
    glyph[h - bar:, :] = level if letter == "L" else glyph[h - bar:, :]
    if letter == "R":
        glyph[:bar, :] = level
        glyph[h // 2 - bar // 2:h // 2 + bar - bar // 2, :] = level
        glyph[:h // 2, w - bar:] = level
        np.fill_diagonal(glyph[h // 2:, :], level)
    text_row = r + box + 2 if r < size // 2 else r - bar - 2
    for k in range(int(rng.integers(0, 5))):
        start = c + k * (bar * 3)
        image[text_row:text_row + bar + 1, start:start + 2 * bar] = level


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Approximately Gaussian blur: repeated [1, 2, 1] / 4 passes (variance 1/2 each), edges replicated."""
    for _ in range(int(round(2.0 * sigma * sigma))):
        rows = np.empty_like(image)
        rows[:, 1:-1] = image[:, :-2] + image[:, 2:]
        rows[:, 1:-1] += 2.0 * image[:, 1:-1]
        rows[:, 0] = 3.0 * image[:, 0] + image[:, 1]
        rows[:, -1] = 3.0 * image[:, -1] + image[:, -2]
        image = np.empty_like(rows)
        image[1:-1] = rows[:-2] + rows[2:]
        image[1:-1] += 2.0 * rows[1:-1]
        image[0] = 3.0 * rows[0] + rows[1]
        image[-1] = 3.0 * rows[-1] + rows[-2]
        image *= 0.0625
    return image


def add_noise(image: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Detector noise (triangular, SD ``noise`` at full grey, half that at black); clipped to [0, 1].

    Drawn from random bytes (the sum of two uniforms), five times faster than Gaussian draws.
    """
    if noise > 0.0:
        pairs = np.frombuffer(rng.bytes(2 * image.size), dtype=np.uint8).reshape(2, *image.shape)
        scatter = pairs[0].astype(np.float32)
        scatter += pairs[1]
        scatter -= 255.0
        scatter *= image * (0.5 * noise / TRIANGULAR_SD) + (0.5 * noise / TRIANGULAR_SD)
        image = image + scatter
    return np.clip(image, 0.0, 1.0, out=image)
