"""Shapes (tapered capsules and ellipses) and their projection onto a pixel grid.

Each shape is a solid whose X-ray path length is drawn: a capsule is a tube of radius r(t) (chord
``2 sqrt(r^2 - d^2)``), optionally hollow (a medullary cavity of lower density) and optionally cut flat
at either end (a metaphysis); an ellipse is the projection of an ellipsoid whose depth equals its
smaller axis. Bones add up (overlapping projections), soft tissue takes the maximum (one silhouette).
Only a shape's bounding box is evaluated, so cost scales with the hand's area, not with the image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Capsule columns: x0, y0, x1, y1, r0, r1, waist, hollow, flat0, flat1, density.
CAPSULE_COLUMNS = 11
# Ellipse columns: cx, cy, ux, uy, vx, vy (semi-axis vectors), depth, density.
ELLIPSE_COLUMNS = 8
MARROW_RADIUS = 0.55  # medullary cavity radius / outer radius


@dataclass
class Shapes:
    """A growing list of capsules and ellipses in one coordinate frame."""

    capsules: list[list[float]] = field(default_factory=list)
    ellipses: list[list[float]] = field(default_factory=list)

    def capsule(self, p0: np.ndarray, p1: np.ndarray, r0: float, r1: float, density: float, *,
                waist: float = 0.0, hollow: float = 0.0, flat0: bool = False, flat1: bool = False) -> None:
        """Add a tube from ``p0`` to ``p1`` with radius r0 -> r1, narrowed by ``waist`` at its middle."""
        self.capsules.append([p0[0], p0[1], p1[0], p1[1], r0, r1, waist, hollow, float(flat0), float(flat1),
                              density])

    def ellipse(self, centre: np.ndarray, a: float, b: float, angle: float, density: float) -> None:
        """Add an ellipse with semi-axes ``a`` (along ``angle``, radians) and ``b``."""
        c, s = np.cos(angle), np.sin(angle)
        self.ellipses.append([centre[0], centre[1], a * c, a * s, -b * s, b * c, 2.0 * min(a, b), density])

    def transformed(self, matrix: np.ndarray, offset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Both arrays mapped by ``p -> matrix @ p + offset`` (a similarity, possibly mirrored)."""
        scale = float(np.sqrt(abs(np.linalg.det(matrix))))
        caps = np.asarray(self.capsules, dtype=np.float64).reshape(-1, CAPSULE_COLUMNS).copy()
        caps[:, 0:2] = caps[:, 0:2] @ matrix.T + offset
        caps[:, 2:4] = caps[:, 2:4] @ matrix.T + offset
        caps[:, 4:7] *= scale
        ells = np.asarray(self.ellipses, dtype=np.float64).reshape(-1, ELLIPSE_COLUMNS).copy()
        ells[:, 0:2] = ells[:, 0:2] @ matrix.T + offset
        ells[:, 2:4] = ells[:, 2:4] @ matrix.T
        ells[:, 4:6] = ells[:, 4:6] @ matrix.T
        ells[:, 6] *= scale
        return caps, ells


def _boxes(lo_x: np.ndarray, hi_x: np.ndarray, lo_y: np.ndarray, hi_y: np.ndarray, size: int) -> np.ndarray:
    """(N, 4) int boxes [row0, row1, col0, col1), clipped to the image."""
    boxes = np.stack([np.floor(lo_y), np.ceil(hi_y) + 1.0, np.floor(lo_x), np.ceil(hi_x) + 1.0], axis=1)
    return np.clip(boxes, 0, size).astype(np.int64)


def upsample2(image: np.ndarray, size: int) -> np.ndarray:
    """Bilinear x2 upsampling of a half-resolution render (pixel i of ``image`` is pixel 2i), cut to ``size``."""
    h, w = image.shape
    out = np.empty((2 * h, 2 * w), dtype=image.dtype)
    out[0::2, 0::2] = image
    out[0::2, 1:-1:2] = image[:, :-1] + image[:, 1:]
    out[0::2, 1:-1:2] *= 0.5
    out[0::2, -1] = image[:, -1]
    out[1:-1:2] = out[0:-2:2] + out[2::2]
    out[1:-1:2] *= 0.5
    out[-1] = out[-2]
    return out[:size, :size]


def _split(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Small and large boxes, so that padding each batch to its largest box wastes little."""
    area = (boxes[:, 1] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 2])
    small = area <= 2 * np.median(area)
    return small, ~small


def _merge_patches(canvas: np.ndarray, boxes: np.ndarray, values: np.ndarray, merge: np.ufunc) -> None:
    for (r_lo, r_hi, c_lo, c_hi), value in zip(boxes.tolist(), values):
        if r_hi > r_lo and c_hi > c_lo:
            patch = canvas[r_lo:r_hi, c_lo:c_hi]
            merge(patch, value[:r_hi - r_lo, :c_hi - c_lo], out=patch)


def _offsets(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel x (N, 1, W) and y (N, H, 1) of each padded box."""
    height = max(int((boxes[:, 1] - boxes[:, 0]).max()), 1)
    width = max(int((boxes[:, 3] - boxes[:, 2]).max()), 1)
    xs = (boxes[:, 2:3] + np.arange(width, dtype=np.float32)).astype(np.float32)[:, None, :]
    ys = (boxes[:, 0:1] + np.arange(height, dtype=np.float32)).astype(np.float32)[:, :, None]
    return xs, ys


def _draw_capsules(canvas: np.ndarray, capsules: np.ndarray, merge: np.ufunc) -> None:
    """Capsules one at a time (their boxes differ too much in shape to batch well)."""
    grid = np.arange(canvas.shape[0], dtype=np.float32)
    x0, y0, x1, y1, ra, rb = capsules[:, :6].T
    reach = np.maximum(ra, rb) + 1.0
    boxes = _boxes(np.minimum(x0, x1) - reach, np.maximum(x0, x1) + reach, np.minimum(y0, y1) - reach,
                   np.maximum(y0, y1) + reach, canvas.shape[0])
    for (r_lo, r_hi, c_lo, c_hi), (x0, y0, x1, y1, ra, rb, waist, hollow, flat0, flat1, density) in zip(
            boxes.tolist(), capsules.tolist()):
        if r_hi <= r_lo or c_hi <= c_lo:
            continue
        dx, dy = x1 - x0, y1 - y0
        inv = 1.0 / max(dx * dx + dy * dy, 1e-9)
        px, py = grid[c_lo:c_hi] - x0, grid[r_lo:r_hi] - y0
        t_raw = (px * (dx * inv))[None, :] + (py * (dy * inv))[:, None]  # (H, W) position along the axis
        t = np.clip(t_raw, 0.0, 1.0)
        ex, ey = px[None, :] - t * dx, py[:, None] - t * dy
        d2 = ex * ex
        d2 += ey * ey                                                      # squared distance to the axis
        r = t * ((rb - ra - 4.0 * waist) + (4.0 * waist) * t)
        r += ra
        r2 = r * r
        value = np.sqrt(np.maximum(r2 - d2, 0.0))
        if hollow:
            value -= hollow * np.sqrt(np.maximum((MARROW_RADIUS ** 2) * r2 - d2, 0.0))
        if flat0:
            value *= t_raw >= 0.0
        if flat1:
            value *= t_raw <= 1.0
        value *= 2.0 * density
        patch = canvas[r_lo:r_hi, c_lo:c_hi]
        merge(patch, value, out=patch)


def _draw_ellipses(canvas: np.ndarray, ellipses: np.ndarray, merge: np.ufunc) -> None:
    """Ellipses evaluated in two batches (small, large boxes), merged one patch at a time."""
    cx, cy, ux, uy, vx, vy = ellipses[:, :6].T
    reach_x, reach_y = np.hypot(ux, vx) + 1.0, np.hypot(uy, vy) + 1.0
    boxes = _boxes(cx - reach_x, cx + reach_x, cy - reach_y, cy + reach_y, canvas.shape[0])
    for group in _split(boxes):
        if group.any():
            _draw_ellipse_batch(canvas, ellipses[group], boxes[group], merge)


def _draw_ellipse_batch(canvas: np.ndarray, ellipses: np.ndarray, boxes: np.ndarray, merge: np.ufunc) -> None:
    cx, cy, ux, uy, vx, vy, depth, density = (column[:, None, None] for column in ellipses.astype(np.float32).T)
    xs, ys = _offsets(boxes)
    px, py = xs - cx, ys - cy
    inv_u, inv_v = 1.0 / (ux * ux + uy * uy), 1.0 / (vx * vx + vy * vy)
    qu = px * (ux * inv_u) + py * (uy * inv_u)               # (N, H, W) coordinate along the first axis
    qv = px * (vx * inv_v) + py * (vy * inv_v)
    inside = 1.0 - qu * qu - qv * qv
    values = np.sqrt(np.maximum(inside, 0.0, out=inside), out=inside)
    values *= depth * density
    _merge_patches(canvas, boxes, values, merge)


def draw(canvas: np.ndarray, capsules: np.ndarray, ellipses: np.ndarray, combine: str = "add") -> None:
    """Project every shape onto ``canvas`` (H, W; pixel centres at integer x=col, y=row) in place.

    ``combine`` is "add" (attenuation of overlapping bones sums) or "max" (one soft-tissue silhouette).
    """
    merge = np.add if combine == "add" else np.maximum
    if len(capsules):
        _draw_capsules(canvas, capsules, merge)
    if len(ellipses):
        _draw_ellipses(canvas, ellipses, merge)
