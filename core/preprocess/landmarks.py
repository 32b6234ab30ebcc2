"""A small heat-map localiser of the hand's reading regions, and key points carried back to the input image.

The network reads the canonical image (left hand, fingers up) at ``size`` px and gives one heat map per key point
at a quarter of that; a spatial softmax turns each map into a probability over positions and the key point is its
expected position (integral regression: differentiable, sub-pixel). Key points are fractions of the image's width
and height (0 = left/top). It is trained by ``python -m client train-localiser`` on reader-drawn boxes
(`core.preprocess.landmarks_train`); no weights are shipped (the only boxes are on real radiographs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from core.data.config import DataError
from core.preprocess.orientation import float_state, half_state
from core.preprocess.pose import Pose
from core.preprocess.small_nets import load_once

KEYPOINTS = ("wrist", "radius", "ulna", "mcp3")  # the carpal region, distal radius and ulna, third finger's MCP


class LocaliserNet(nn.Module):
    """Three stride-2 conv blocks, dilated context at 1/8, one upsampling to 1/4 and a heat map per key point."""

    def __init__(self, size: int = 64, width: int = 16, n_points: int = len(KEYPOINTS)) -> None:
        super().__init__()
        if size % 8:
            raise ValueError(f"localiser input size must be a multiple of 8, got {size}")
        self.size, self.width, self.n_points = size, width, n_points

        def block(c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, padding=dilation, dilation=dilation, bias=False),
                                 nn.BatchNorm2d(c_out), nn.ReLU())

        w = width
        self.down = nn.Sequential(block(1, w, 2), block(w, w), block(w, 2 * w, 2), block(2 * w, 2 * w))
        self.context = nn.Sequential(block(2 * w, 4 * w, 2), block(4 * w, 4 * w, dilation=2),
                                     block(4 * w, 4 * w, dilation=4))
        self.up = block(4 * w + 2 * w, 2 * w)
        self.heads = nn.Conv2d(2 * w, n_points, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, n_points, size/4, size/4) logits."""
        skip = self.down(x)
        deep = nn.functional.interpolate(self.context(skip), size=skip.shape[-2:], mode="bilinear",
                                         align_corners=False)
        return self.heads(self.up(torch.cat([deep, skip], dim=1)))


def expected_points(logits: torch.Tensor) -> torch.Tensor:
    """(batch, n_points, 2) expected (x, y) of each map's spatial softmax, as fractions of the map's side."""
    b, k, h, w = logits.shape
    probs = logits.flatten(2).softmax(dim=2).view(b, k, h, w)
    xs = (torch.arange(w, dtype=probs.dtype) + 0.5) / w
    ys = (torch.arange(h, dtype=probs.dtype) + 0.5) / h
    return torch.stack([(probs.sum(2) * xs).sum(-1), (probs.sum(3) * ys).sum(-1)], dim=-1)


def localiser_input(image: np.ndarray, size: int) -> np.ndarray:
    """The whole image squeezed to a ``size`` square, min-max stretched: (size, size) float32.

    Nothing is cut: the key points are fractions of the whole image's width and height, so a constant band (black
    padding, a collimation mask) must stay in the input (the orientation model's `network_input` cuts it).
    """
    squeezed = cv2.resize(np.asarray(image, dtype=np.float32), (size, size), interpolation=cv2.INTER_AREA)
    low, high = float(squeezed.min()), float(squeezed.max())
    return (squeezed - low) / max(high - low, 1e-6)


def save_localiser(path: Path, net: LocaliserNet, metadata: dict[str, Any]) -> Path:
    """Write the weights (float16) with the network's settings and how it was trained."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = half_state(net)
    torch.save({"state_dict": state, "size": net.size, "width": net.width, "keypoints": list(KEYPOINTS),
                "metadata": metadata}, path)
    return path


class Localiser:
    """The loaded network, one image at a time (inference only)."""

    def __init__(self, net: LocaliserNet, metadata: dict[str, Any]) -> None:
        self.net = net.eval()
        self.metadata = metadata

    @classmethod
    def load(cls, path: Path) -> Localiser:
        """Read a file written by `save_localiser`; a missing or foreign file is a one-line DataError."""
        try:
            payload = torch.load(Path(path), map_location="cpu", weights_only=True)
            if tuple(payload["keypoints"]) != KEYPOINTS:
                raise ValueError(f"key points {payload['keypoints']}, expected {list(KEYPOINTS)}")
            net = LocaliserNet(int(payload["size"]), int(payload["width"]))
            net.load_state_dict(float_state(payload["state_dict"]))
        except (OSError, KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise DataError(f"cannot read the localiser {path}: {type(exc).__name__}: {exc}".splitlines()[0]
                            ) from None
        return cls(net, dict(payload.get("metadata", {})))

    @torch.inference_mode()
    def predict(self, image: np.ndarray) -> np.ndarray:
        """(n_points, 2) key points of a canonical image, as fractions of its width and height."""
        x = torch.from_numpy(localiser_input(image, self.net.size))[None, None]
        return expected_points(self.net(x))[0].numpy().astype(np.float64)


def observed_points(points: np.ndarray, pose: Pose, shape: tuple[int, int]) -> np.ndarray:
    """Key points of the canonical image (fractions) carried to the observed image that `pose` made of it.

    ``shape`` is the canonical image's (height, width); the steps are those of `core.preprocess.pose.apply_pose`
    (mirror, small turn about the centre, quarter turns; inversion moves nothing). Returns fractions of the
    observed image's width and height.
    """
    h, w = shape
    xy = np.asarray(points, dtype=np.float64) * [w, h]  # continuous pixel coordinates, 0 at the left/top edge
    if pose.mirrored:
        xy[:, 0] = w - xy[:, 0]
    if pose.angle_deg:
        matrix = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), pose.angle_deg, 1.0)
        centres = xy - 0.5
        xy = centres @ matrix[:, :2].T + matrix[:, 2] + 0.5
    for _ in range(pose.quarter_turns):  # np.rot90, anticlockwise: (x, y) -> (y, w - x), the sides swap
        xy = np.stack([xy[:, 1], w - xy[:, 0]], axis=1)
        h, w = w, h
    return xy / [w, h]


def load_localiser_cached(path: str | Path, sha256: str) -> Localiser:
    """One loaded localiser per (file, content) and process."""
    return load_once(Localiser.load, path, sha256)
