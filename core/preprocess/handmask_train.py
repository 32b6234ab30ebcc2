"""Train the hand mask U-Net on phantom images and their true masks, under randomised acquisitions.

A phantom folder (``python -m sim generate``) holds ``images/<id>`` and ``masks/<id>.png`` (the visible hand and
forearm). Each step draws a batch and, per image, a random acquisition far beyond the presets' own: mirroring and
quarter turns, a film cut to another aspect ratio, exposure (gamma, contrast, offset), a background ramp, a
collimated field whose unexposed surround is bright, grey or dark, textured and tilted (the mask is cut to the
field, as the phantom's own collimation does), constant padding, burned-in text, blur, noise and inversion. The
loss is the seed's: binary cross-entropy minus the log of a soft Jaccard index. The first tenth of each folder is
held out, and the intersection over union of the finished model's masks is measured on it, as given and under one
fixed draw of random acquisitions.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from core.data.config import DataError
from core.data.images import ImageError, read_image
from core.data.manifest import IMAGE_EXTENSIONS
from core.preprocess.small_nets import fit_steps
from core.preprocess.handmask import MASK_INPUT_SIZE, HandMaskModel, HandMaskNet, mask_input, save_hand_mask
from core.preprocess.orientation_train import shrink

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MaskTrainConfig:
    """Budget and optimiser of the hand mask's training."""

    steps: int = 1000
    batch_size: int = 16
    lr: float = 3e-3
    size: int = MASK_INPUT_SIZE
    width: int = 8
    max_images: int = 400
    seed: int = 0
    threads: int | None = None


def load_masked_images(folder: Path, max_images: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Up to ``max_images`` (image, mask) pairs of a phantom folder, at most 128 px on a side."""
    folder = Path(folder)
    if not (folder / "masks").is_dir() or not (folder / "images").is_dir():
        raise DataError(f"{folder}: no images/ and masks/ folders (train-mask needs phantom folders written by "
                        "python -m sim generate)")
    pairs = []
    for path in sorted(p for p in (folder / "images").iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS):
        if len(pairs) == max_images:
            break
        mask_path = folder / "masks" / f"{path.stem}.png"
        if not mask_path.is_file():
            continue
        try:
            image, mask = read_image(path), read_image(mask_path) > 0.5
        except ImageError as exc:
            logger.warning("skipped %s", exc)
            continue
        small = shrink(image)
        size = (small.shape[1], small.shape[0])
        pairs.append((small, cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0.5))
    if len(pairs) < 8:
        raise DataError(f"{folder}: {len(pairs)} images with masks; the hand mask needs at least 8")
    return pairs


def _field(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A tilted rectangle (bool) leaving 2-22 % of each side outside, as a collimator's exposed field."""
    h, w = shape
    angle = np.radians(rng.normal(0.0, 4.0))
    c, s = np.cos(angle), np.sin(angle)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    u = (xs - w / 2) * c + (ys - h / 2) * s
    v = -(xs - w / 2) * s + (ys - h / 2) * c
    left, right, top, bottom = rng.uniform(0.02, 0.22, 4)
    return (u > (left - 0.5) * w) & (u < (0.5 - right) * w) & (v > (top - 0.5) * h) & (v < (0.5 - bottom) * h)


def _texture(shape: tuple[int, int], rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """Smooth random variation (an uneven unexposed surround, a non-uniform background)."""
    coarse = rng.normal(0.0, amplitude, (4, 4)).astype(np.float32)
    return cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


def collimated(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Outside a random exposed field, an unexposed surround (a quarter dark, the rest grey to white, uneven); the
    mask is cut to the field (what is visible)."""
    field = _field(image.shape, rng)
    level = rng.uniform(0.0, 0.1) if rng.random() < 0.25 else rng.uniform(0.3, 1.0)
    surround = level + _texture(image.shape, rng, rng.uniform(0.0, 0.08)) + rng.normal(0.0, 0.02, image.shape)
    return np.where(field, image, surround), mask & field


def randomised_acquisition(image: np.ndarray, mask: np.ndarray,
                           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One random acquisition of a phantom image and its mask (both moved and cut together)."""
    image, mask = np.asarray(image, dtype=np.float32), np.asarray(mask, dtype=bool)
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    if rng.random() < 0.2:
        turns = int(rng.integers(1, 4))
        image, mask = np.rot90(image, turns), np.rot90(mask, turns)
    if rng.random() < 0.5:  # films are seldom square: cut one side to 65-100 %
        axis, share = int(rng.integers(2)), rng.uniform(0.65, 1.0)
        keep = max(8, round(image.shape[axis] * share))
        start = int(rng.integers(0, image.shape[axis] - keep + 1))
        image, mask = np.take(image, range(start, start + keep), axis), np.take(mask, range(start, start + keep), axis)
    image, mask = np.ascontiguousarray(image), np.ascontiguousarray(mask)
    out = np.power(np.clip(image, 0.0, 1.0), rng.uniform(0.5, 2.0))
    out = (out - 0.5) * rng.uniform(0.5, 1.3) + 0.5 + rng.uniform(-0.15, 0.15)
    if rng.random() < 0.4:
        out = out + _texture(out.shape, rng, rng.uniform(0.0, 0.08))
    if rng.random() < 0.5:
        out, mask = collimated(out, mask, rng)
    if rng.random() < 0.15:  # constant padding along one edge
        edge, width = int(rng.integers(4)), max(1, round(rng.uniform(0.03, 0.15) * min(out.shape)))
        band = np.zeros(out.shape, dtype=bool)
        (band[:width], band[-width:], band[:, :width], band[:, -width:])[edge][...] = True
        out, mask = np.where(band, float(rng.random() < 0.3), out), mask & ~band
    if rng.random() < 0.3:  # burned-in text: not anatomy, the mask does not change
        ink = np.zeros(out.shape, dtype=np.uint8)
        h, w = out.shape
        position = (int(rng.integers(0, max(1, w - 20))), int(rng.integers(10, h)))
        cv2.putText(ink, str(rng.choice(["L", "R", "12/03", "PA"])), position, cv2.FONT_HERSHEY_SIMPLEX,
                    max(h, w) / 200.0, 255, max(1, round(max(h, w) / 120)))
        out = np.where(ink > 0, rng.uniform(0.85, 1.0), out)
    if rng.random() < 0.3:
        out = cv2.GaussianBlur(out.astype(np.float32), (0, 0), sigmaX=rng.uniform(0.3, 2.0))
    if rng.random() < 0.5:
        out = out + rng.normal(0.0, rng.uniform(0.0, 0.06), out.shape)
    out = np.clip(out, 0.0, 1.0).astype(np.float32)
    if rng.random() < 0.1:
        out = 1.0 - out
    return out, mask


def _target(mask: np.ndarray, size: int) -> np.ndarray:
    """The share of each cell of a ``size`` square that is hand (a soft target, as the image is squeezed)."""
    return cv2.resize(mask.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)


def mask_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The seed's loss: binary cross-entropy minus the log of the soft Jaccard index (per image, averaged)."""
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    intersection = (p * t).sum(1)
    jaccard = (intersection + 1.0) / (p.sum(1) + t.sum(1) - intersection + 1.0)
    return bce - torch.log(jaccard).mean()


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks (1 when both are empty)."""
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def held_out_iou(model: HandMaskModel, pairs: list[tuple[np.ndarray, np.ndarray]], seed: int) -> dict[str, float]:
    """Mean IoU of the model's masks on ``pairs`` as given, and under one fixed draw of random acquisitions."""
    rng = np.random.default_rng(seed + 10_000)
    given = [iou(model(image).mask, mask) for image, mask in pairs]
    drawn = [randomised_acquisition(image, mask, rng) for image, mask in pairs]
    randomised = [iou(model(image).mask, mask) for image, mask in drawn]
    return {"as_given": round(float(np.mean(given)), 4), "randomised": round(float(np.mean(randomised)), 4),
            "n_images": len(pairs)}


def train_hand_mask(folders: list[Path], out: Path, config: MaskTrainConfig, command: str = "") -> dict[str, object]:
    """Train on the phantom folders (up to ``max_images`` each), write ``out``; the first tenth of each is held out.

    Returns the metadata saved with the weights (data, command, budget, held-out IoU).
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    per_folder = [load_masked_images(folder, config.max_images) for folder in folders]
    held_out = [pair for pairs in per_folder for pair in pairs[:max(2, len(pairs) // 10)]]
    train = [pair for pairs in per_folder for pair in pairs[max(2, len(pairs) // 10):]]
    net = HandMaskNet(config.size, config.width)

    def batch_loss() -> torch.Tensor:
        batch = [randomised_acquisition(*train[i], rng) for i in rng.integers(len(train), size=config.batch_size)]
        x = torch.from_numpy(np.stack([mask_input(image, config.size) for image, _ in batch]))[:, None]
        y = torch.from_numpy(np.stack([_target(mask, config.size) for _, mask in batch]))[:, None]
        return mask_loss(net(x), y)

    seconds = fit_steps(net, batch_loss, config.steps, config.lr)
    metadata: dict[str, object] = {"trained_on": [str(folder) for folder in folders], "command": command,
                                   "n_images": len(train), "config": asdict(config), "train_seconds": round(seconds, 1)}
    save_hand_mask(out, net, metadata)
    metadata["held_out_iou"] = held_out_iou(HandMaskModel.load(out), held_out, config.seed)
    save_hand_mask(out, net, metadata)
    logger.info("held-out IoU %s; wrote %s", metadata["held_out_iou"], out)
    return metadata
