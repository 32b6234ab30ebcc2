"""A small CNN that recognises how a radiograph was turned, mirrored and inverted (self-supervised).

It is trained without labels (see `core.preprocess.orientation_train`): canonical images are posed at random and
the network learns to name the pose, with four heads: quarter turns (4 classes), mirrored (2), inverted (2) and the
small angle (regression, degrees / ANGLE_SCALE). Its confidence is the product of the three classifiers' top
probabilities. Weights are a small ``.pt`` file holding a state dict and the network's settings.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from core.data.config import DataError
from core.preprocess.pose import Pose, undo_pose
from core.preprocess.segment import constant_box
from core.preprocess.small_nets import load_once

logger = logging.getLogger(__name__)

ANGLE_SCALE = 30.0  # the angle head predicts degrees / ANGLE_SCALE
INPUT_SIZE = 64


def network_input(image: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """Constant edge bands cut, min-max stretch, keep the aspect ratio, pad to a ``size`` square by repeating the
    edges: (size, size) float32.

    Constant bands (black padding around a small scan, a digital collimation mask) carry no pose and shrink the
    hand the network sees. Edges, not black, for the padding: black would look like background in one polarity
    and not in the other.
    """
    top, bottom, left, right = constant_box(image)
    if bottom - top >= 8 and right - left >= 8:
        image = image[top:bottom, left:right]
    low, high = float(image.min()), float(image.max())
    h, w = image.shape
    ratio = size / max(h, w)
    new_h, new_w = max(1, round(h * ratio)), max(1, round(w * ratio))
    interpolation = cv2.INTER_AREA if ratio < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(np.asarray(image, dtype=np.float32), (new_w, new_h), interpolation=interpolation)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    padded = cv2.copyMakeBorder(resized, top, size - new_h - top, left, size - new_w - left, cv2.BORDER_REPLICATE)
    return (padded - low) / max(high - low, 1e-6)


class OrientationNet(nn.Module):
    """Four stride-2 conv blocks, a flattened map (positions matter: which side the thumb is on) and four heads."""

    def __init__(self, size: int = INPUT_SIZE, width: int = 16) -> None:
        super().__init__()
        if size % 16:
            raise ValueError(f"orientation input size must be a multiple of 16, got {size}")
        self.size, self.width = size, width
        channels = [1, width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(channels[-1] * (size // 16) ** 2, 128), nn.ReLU(),
                                    nn.Dropout(0.2))
        self.heads = nn.Linear(128, 4 + 2 + 2 + 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.heads(self.hidden(self.features(x)))
        return {"turns": out[:, :4], "mirrored": out[:, 4:6], "inverted": out[:, 6:8], "angle": out[:, 8]}


def poses_from_outputs(outputs: dict[str, torch.Tensor]) -> list[tuple[Pose, float]]:
    """(pose, confidence) per batch row."""
    probs = {name: outputs[name].softmax(dim=1) for name in ("turns", "mirrored", "inverted")}
    best = {name: p.max(dim=1) for name, p in probs.items()}
    confidence = best["turns"].values * best["mirrored"].values * best["inverted"].values
    angles = outputs["angle"] * ANGLE_SCALE
    return [(Pose(int(best["turns"].indices[i]), bool(best["mirrored"].indices[i]),
                  bool(best["inverted"].indices[i]), float(angles[i])), float(confidence[i]))
            for i in range(len(confidence))]


def half_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """The network's state with its floating-point tensors as float16 (small preprocessing models ship this way)."""
    return {k: (v.half() if v.is_floating_point() else v) for k, v in net.state_dict().items()}


def float_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state written by `half_state`, back to float32 for inference."""
    return {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}


def save_orientation(path: Path, net: OrientationNet, metadata: dict[str, Any]) -> Path:
    """Write the weights (as float16, a few hundred kB) and how they were trained."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = half_state(net)
    torch.save({"state_dict": state, "size": net.size, "width": net.width, "metadata": metadata}, path)
    return path


class OrientationModel:
    """The loaded network, used one image at a time (thread-safe: inference only)."""

    def __init__(self, net: OrientationNet, metadata: dict[str, Any]) -> None:
        self.net = net.eval()
        self.metadata = metadata

    @classmethod
    def load(cls, path: Path) -> OrientationModel:
        """Read a file written by `save_orientation`; a missing or foreign file is a one-line DataError."""
        try:
            payload = torch.load(Path(path), map_location="cpu", weights_only=True)
            net = OrientationNet(int(payload["size"]), int(payload["width"]))
            net.load_state_dict(float_state(payload["state_dict"]))
        except (OSError, KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise DataError(f"cannot read the orientation model {path}: {type(exc).__name__}: {exc}".splitlines()[0]
                            ) from None
        return cls(net, dict(payload.get("metadata", {})))

    @torch.inference_mode()
    def predict(self, image: np.ndarray, polarity: bool | None = None) -> tuple[Pose, float]:
        """The pose of one observed 2-D image and the confidence in it (one forward pass).

        ``polarity`` (True: inverted, False: bone bright), when physical evidence or the file settled it
        (`core.preprocess.polarity`), takes the place of the inversion head's vote: the head no longer lowers the
        confidence when it agrees, and when it disagrees the confidence is multiplied by the head's probability
        of the settled polarity, so an image on which both are sure and disagree is refused rather than damaged.

        Runs on one thread: for one 64 px image, torch's thread pool costs more than it saves (88 ms with two
        threads against 7 ms with one on the busy 2-core test machine). The previous thread count is restored.
        """
        x = torch.from_numpy(network_input(image, self.net.size))[None, None]
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            outputs = self.net(x)
        finally:
            torch.set_num_threads(threads)
        pose, confidence = poses_from_outputs(outputs)[0]
        if polarity is None:
            return pose, confidence
        inverted = outputs["inverted"].softmax(dim=1)[0]
        settled = float(inverted[int(polarity)])
        confidence = confidence / float(inverted.max()) * (1.0 if settled >= 0.5 else settled)
        return Pose(pose.quarter_turns, pose.mirrored, polarity, pose.angle_deg), confidence

    def predict_checked(self, image: np.ndarray, polarity: bool | None = None) -> tuple[Pose, float]:
        """The pose, confirmed by a second look at the image with the pose undone.

        The second pass must see the canonical pose (no turn, mirror or inversion); its confidence, which is
        what a correctly undone image earns, becomes the confidence. When it sees anything else the two passes
        disagree and the confidence is the product of both passes' confidences (so a doubtful image is refused).
        ``polarity`` as in `predict` (the second look then knows the undone image is bone bright).
        """
        ratio = 2 * self.net.size / max(image.shape)  # both looks work on a small copy: a full film costs 10x more
        if ratio < 1:
            size = (max(1, round(image.shape[1] * ratio)), max(1, round(image.shape[0] * ratio)))
            image = cv2.resize(np.asarray(image, dtype=np.float32), size, interpolation=cv2.INTER_AREA)
        pose, first = self.predict(image, polarity)
        second_pose, second = self.predict(undo_pose(image, pose), None if polarity is None else False)
        if second_pose.quarter_turns == 0 and not second_pose.mirrored and not second_pose.inverted:
            return pose, max(first, second)
        return pose, first * second


def load_cached(path: Path, sha256: str) -> OrientationModel:
    """One loaded model per (file, content) and process."""
    return load_once(OrientationModel.load, path, sha256)
