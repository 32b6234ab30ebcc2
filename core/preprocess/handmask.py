"""A small U-Net that masks the hand (and forearm) of a radiograph: the learned alternative to `segment.hand_mask`.

As in the seed (Rakhlin et al.), a U-Net with batch normalisation: a contracting path of three 2x poolings, a
symmetric expanding path with skip connections, one logit per pixel. It reads the image squeezed to a ``size``
square (64 px by default; the mask is drawn back at the input's width and height) after a 1-99 percentile stretch,
and, as the seed finishes its segmentation, small extraneous components are removed: the largest component is the
hand, its holes are filled. It is trained on phantom images and their true masks under randomised acquisitions
(`core.preprocess.handmask_train`, ``python -m client train-mask``); the packaged weights
(``weights/hand_mask_phantom.pt``) were made that way and record the command and seed in their metadata.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from core.data.config import DataError
from core.preprocess.orientation import float_state, half_state
from core.preprocess.segment import Segmentation, fill_holes
from core.preprocess.small_nets import load_once

MASK_INPUT_SIZE = 64
THRESHOLD = 0.5  # a pixel is hand when the network's probability reaches this
MIN_RANGE = 0.05  # an image whose 1st and 99th percentiles are closer than this is blank: no hand


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                         nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class HandMaskNet(nn.Module):
    """U-Net of depth 3: widths w, 2w, 4w on the way down, 8w at the bottom (1/8 of the input), skips on the way up."""

    def __init__(self, size: int = MASK_INPUT_SIZE, width: int = 8) -> None:
        super().__init__()
        if size % 8:
            raise ValueError(f"hand mask input size must be a multiple of 8, got {size}")
        self.size, self.width = size, width
        w = width
        self.down = nn.ModuleList([_block(1, w), _block(w, 2 * w), _block(2 * w, 4 * w)])
        self.bottom = _block(4 * w, 8 * w)
        self.up = nn.ModuleList([_block(8 * w + 4 * w, 4 * w), _block(4 * w + 2 * w, 2 * w), _block(2 * w + w, w)])
        self.head = nn.Conv2d(w, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, 1, size, size) logits of "hand"."""
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = nn.functional.max_pool2d(x, 2)
        x = self.bottom(x)
        for block, skip in zip(self.up, reversed(skips)):
            x = nn.functional.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)


def mask_input(image: np.ndarray, size: int) -> np.ndarray:
    """The image squeezed to a ``size`` square and stretched between its 1st and 99th percentiles (a burned-in
    marker at the top level or black padding does not set the range), float32."""
    squeezed = cv2.resize(np.asarray(image, dtype=np.float32), (size, size), interpolation=cv2.INTER_AREA)
    low, high = np.percentile(squeezed, (1.0, 99.0))
    return np.clip((squeezed - low) / max(float(high - low), 1e-6), 0.0, 1.0).astype(np.float32)


def clean_mask(probability: np.ndarray) -> np.ndarray:
    """Pixels at or above THRESHOLD, the largest 8-connected component only, holes filled (bool)."""
    foreground = (probability >= THRESHOLD).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(foreground, connectivity=8)
    if count <= 1:
        return np.zeros(probability.shape, dtype=bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return fill_holes((labels == largest).astype(np.uint8)).astype(bool)


def save_hand_mask(path: Path, net: HandMaskNet, metadata: dict[str, Any]) -> Path:
    """Write the weights (float16) with the network's settings and how it was trained."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"kind": "hand_mask", "state_dict": half_state(net), "size": net.size, "width": net.width,
                "metadata": metadata}, path)
    return path


class HandMaskModel:
    """The loaded network, one image at a time (inference only)."""

    def __init__(self, net: HandMaskNet, metadata: dict[str, Any]) -> None:
        self.net = net.eval()
        self.metadata = metadata

    @classmethod
    def load(cls, path: Path) -> HandMaskModel:
        """Read a file written by `save_hand_mask`; a missing, corrupt or foreign file is a one-line DataError."""
        try:
            payload = torch.load(Path(path), map_location="cpu", weights_only=True)
            if not isinstance(payload, dict) or payload.get("kind") != "hand_mask":
                raise ValueError("not a hand mask file (written by python -m client train-mask)")
            net = HandMaskNet(int(payload["size"]), int(payload["width"]))
            net.load_state_dict(float_state(payload["state_dict"]))
        except (OSError, KeyError, RuntimeError, ValueError, TypeError, EOFError, pickle.UnpicklingError) as exc:
            raise DataError(f"cannot read the hand mask model {path}: {type(exc).__name__}: {exc}".splitlines()[0]
                            ) from None
        return cls(net, dict(payload.get("metadata", {})))

    @torch.inference_mode()
    def probability(self, image: np.ndarray) -> np.ndarray:
        """(h, w) probability of "hand" at the input's size."""
        x = torch.from_numpy(mask_input(image, self.net.size))[None, None]
        small = torch.sigmoid(self.net(x))[0, 0].numpy()
        h, w = image.shape
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)

    def __call__(self, image: np.ndarray) -> Segmentation:
        """The hand mask of a 2-D image in [0, 1], as `segment.hand_mask` gives it (no band box is cut); empty for a
        blank image (the network, stretching its noise, would find a hand in it)."""
        h, w = image.shape
        low, high = np.percentile(image, (1.0, 99.0))
        if high - low < MIN_RANGE:
            return Segmentation(np.zeros((h, w), dtype=bool), (0, h, 0, w), 0.0)
        mask = clean_mask(self.probability(image))
        return Segmentation(mask, (0, h, 0, w), float(mask.mean()))


def load_hand_mask_cached(path: str | Path, sha256: str) -> HandMaskModel:
    """One loaded hand mask model per (file, content) and process."""
    return load_once(HandMaskModel.load, path, sha256)
