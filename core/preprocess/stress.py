"""Stress transforms: what hospitals' images do to a well-behaved radiograph.

Used by the stress benchmark (each transform alone) and by the orientation model's training (a random mix of the
photometric ones, so that the model names the pose of a noisy, blurred or badly exposed image too). Every
transform maps a 2-D float32 image in [0, 1] (canonical polarity) to another one; the random ones draw from ``rng``.
"""

from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

from core.preprocess.pose import rotate_small

StressFn = Callable[[np.ndarray, np.random.Generator], np.ndarray]

COLLIMATION_SHARE = 0.12  # width of each collimated band, as a share of the side
COLLIMATION_LEVEL = 0.85  # grey level of the unexposed band


def _gamma(value: float) -> StressFn:
    return lambda x, rng: np.power(x, value, dtype=np.float32)


def noise(image: np.ndarray, rng: np.random.Generator, sd: float = 0.05) -> np.ndarray:
    """Additive Gaussian noise of standard deviation ``sd`` (full range 1), clipped."""
    return np.clip(image + rng.normal(0.0, sd, image.shape).astype(np.float32), 0.0, 1.0)


def blur(image: np.ndarray, rng: np.random.Generator, sigma_share: float = 0.015) -> np.ndarray:
    """Gaussian blur with sigma = ``sigma_share`` of the longer side (1.5 px at 100 px)."""
    sigma = sigma_share * max(image.shape)
    return cv2.GaussianBlur(image, (0, 0), sigmaX=sigma)


def downscale(image: np.ndarray, rng: np.random.Generator, factor: float = 0.5) -> np.ndarray:
    """Fewer pixels: each side times ``factor``."""
    h, w = image.shape
    return cv2.resize(image, (max(1, round(w * factor)), max(1, round(h * factor))), interpolation=cv2.INTER_AREA)


def collimation(image: np.ndarray, rng: np.random.Generator, share: float = COLLIMATION_SHARE) -> np.ndarray:
    """A bright unexposed band along every edge, as a collimator leaves it."""
    out = image.copy()
    h, w = out.shape
    dy, dx = max(1, round(share * h)), max(1, round(share * w))
    for band in (out[:dy], out[-dy:], out[:, :dx], out[:, -dx:]):
        band[...] = COLLIMATION_LEVEL
    return out


def text_marker(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A burned-in white side marker and date, top left, as technicians add them."""
    h, w = image.shape
    ink = np.zeros((h, w), dtype=np.uint8)
    scale = max(h, w) / 160.0
    thickness = max(1, round(scale * 1.5))
    cv2.putText(ink, "L", (round(0.03 * w), round(0.12 * h)), cv2.FONT_HERSHEY_SIMPLEX, 0.9 * scale, 255, thickness)
    cv2.putText(ink, "12/03", (round(0.03 * w), round(0.19 * h)), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * scale, 255,
                max(1, thickness // 2))
    out = image.copy()
    out[ink > 0] = 1.0
    return out


STRESS: dict[str, StressFn] = {
    "rotate90": lambda x, rng: np.ascontiguousarray(np.rot90(x, 1)),
    "rotate180": lambda x, rng: np.ascontiguousarray(np.rot90(x, 2)),
    "rotate270": lambda x, rng: np.ascontiguousarray(np.rot90(x, 3)),
    "rotate+20": lambda x, rng: rotate_small(x, 20.0),
    "rotate-20": lambda x, rng: rotate_small(x, -20.0),
    "mirror": lambda x, rng: np.ascontiguousarray(x[:, ::-1]),
    "invert": lambda x, rng: 1.0 - x,
    "contrast0.5": lambda x, rng: (0.25 + 0.5 * x).astype(np.float32),
    "gamma0.6": _gamma(0.6),
    "gamma1.6": _gamma(1.6),
    "noise": noise,
    "blur": blur,
    "downscale0.5": downscale,
    "collimation": collimation,
    "text": text_marker,
}


def photometric_mix(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random acquisition: gamma, contrast, blur, noise, size, collimation and markers, each with some chance."""
    out = np.power(np.clip(image, 0.0, 1.0), rng.uniform(0.5, 2.0), dtype=np.float32)
    out = (out - 0.5) * rng.uniform(0.4, 1.2) + 0.5 + rng.uniform(-0.1, 0.1)
    if rng.random() < 0.3:
        out = blur(out, rng, rng.uniform(0.005, 0.025))
    if rng.random() < 0.3:
        out = downscale(out, rng, rng.uniform(0.35, 0.9))
    if rng.random() < 0.2:
        out = collimation(np.clip(out, 0, 1), rng, rng.uniform(0.03, 0.15))
    if rng.random() < 0.2:
        out = text_marker(np.clip(out, 0, 1), rng)
    if rng.random() < 0.4:
        out = noise(np.clip(out, 0, 1), rng, rng.uniform(0.0, 0.08))
    return np.clip(out, 0.0, 1.0).astype(np.float32)
