"""The pose of a radiograph relative to the canonical one, and how to apply or undo it.

Canonical: a left hand, postero-anterior, fingers up, bone bright (MONOCHROME2). An observed image is the canonical
one mirrored (a right hand, or a film read from the wrong side), turned by a small angle, turned by quarter turns and
possibly stored with inverted polarity, in that order; `undo_pose` runs the steps backwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Pose:
    """How an observed image differs from the canonical one.

    Attributes:
        quarter_turns: counter-clockwise quarter turns (0-3), as ``np.rot90``.
        mirrored: flipped left-right before turning.
        inverted: grey levels inverted (bone dark).
        angle_deg: small counter-clockwise rotation applied before the quarter turns.
    """

    quarter_turns: int = 0
    mirrored: bool = False
    inverted: bool = False
    angle_deg: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "quarter_turns", int(self.quarter_turns) % 4)

    @property
    def is_identity(self) -> bool:
        return self.quarter_turns == 0 and not self.mirrored and not self.inverted and self.angle_deg == 0.0


def rotate_small(image: np.ndarray, angle_deg: float, fill: float | None = 0.0) -> np.ndarray:
    """Rotate counter-clockwise about the centre, same size, corners filled with ``fill`` (None: mirrored edges)."""
    if angle_deg == 0.0:
        return image
    h, w = image.shape
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle_deg, 1.0)
    if fill is None:
        return cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    return cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=fill)


def apply_pose(image: np.ndarray, pose: Pose, fill: float | None = 0.0) -> np.ndarray:
    """Canonical -> observed, for a 2-D float image in [0, 1]; ``fill`` as in `rotate_small`."""
    out = np.asarray(image, dtype=np.float32)
    if pose.mirrored:
        out = out[:, ::-1]
    out = rotate_small(np.ascontiguousarray(out), pose.angle_deg, fill)
    out = np.rot90(out, pose.quarter_turns)
    if pose.inverted:
        out = 1.0 - out
    return np.ascontiguousarray(out, dtype=np.float32)


def undo_pose(image: np.ndarray, pose: Pose) -> np.ndarray:
    """Observed -> canonical: the inverse of `apply_pose` (up to the corners a small rotation cuts off)."""
    out = np.asarray(image, dtype=np.float32)
    if pose.inverted:
        out = 1.0 - out
    out = np.rot90(out, -pose.quarter_turns)
    out = rotate_small(np.ascontiguousarray(out), -pose.angle_deg, fill=float(out.min()))
    if pose.mirrored:
        out = out[:, ::-1]
    return np.ascontiguousarray(out, dtype=np.float32)
