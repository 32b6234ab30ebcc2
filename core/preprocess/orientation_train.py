"""Train the orientation model on unlabelled radiographs (self-supervised: the labels are the poses we apply).

Images are taken as canonical (left hand, fingers up, bone bright), except where a phantom's ``keypoints.csv`` gives
the tip of the middle finger, the thumb tip and the capitate: then each image is first turned (and un-mirrored) into
the canonical pose exactly. A site's own folder is mostly canonical; the few turned or right hands in it are label
noise the model tolerates. When the folder has a ``labels.csv``, only ids of the training split are used, so an
evaluation on the test split never sees an image the orientation model was trained on.

Each step draws a batch, a random acquisition (`core.preprocess.stress.photometric_mix`) and a random pose per image
(quarter turn, mirror, inversion, small angle within +-ANGLE_RANGE degrees), and fits the four heads.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from core.data.config import DataError
from core.data.images import ImageError, read_image
from core.data.manifest import IMAGE_EXTENSIONS
from core.data.split import split_of
from core.preprocess.small_nets import fit_steps
from core.preprocess.orientation import (ANGLE_SCALE, INPUT_SIZE, OrientationModel, OrientationNet, network_input,
                                         save_orientation)
from core.preprocess.pose import Pose, apply_pose, rotate_small
from core.preprocess.stress import photometric_mix

logger = logging.getLogger(__name__)

ANGLE_RANGE = 25.0
STORE_SIDE = 128  # training images are kept at most this size in memory


@dataclass(frozen=True)
class OrientationTrainConfig:
    """Budget and optimiser of the orientation model's training."""

    steps: int = 1500
    batch_size: int = 64
    lr: float = 2e-3
    width: int = 16
    input_size: int = INPUT_SIZE
    max_images: int = 4000
    seed: int = 0
    threads: int | None = None


def canonicalize_by_keypoints(image: np.ndarray, tip: np.ndarray, thumb: np.ndarray,
                              capitate: np.ndarray) -> np.ndarray:
    """Turn a phantom image so the capitate -> tip axis points up, and mirror it if the thumb is on the left."""
    axis = tip - capitate
    clockwise = float(np.degrees(np.arctan2(axis[0], -axis[1])))  # tilt of the axis from straight up
    out = rotate_small(image, clockwise, fill=None)  # positive angles turn anticlockwise
    cross = axis[0] * (thumb - capitate)[1] - axis[1] * (thumb - capitate)[0]
    # A left hand seen postero-anterior, fingers up, has its thumb on the image's right: cross > 0 in pixel axes.
    return np.ascontiguousarray(out[:, ::-1]) if cross < 0 else out


def shrink(image: np.ndarray) -> np.ndarray:
    ratio = STORE_SIDE / max(image.shape)
    if ratio >= 1:
        return image
    size = (max(1, round(image.shape[1] * ratio)), max(1, round(image.shape[0] * ratio)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def load_canonical_images(folder: Path, max_images: int) -> list[np.ndarray]:
    """Read up to ``max_images`` images of ``folder`` (or its ``images/``), canonical as described above."""
    folder = Path(folder)
    image_dir = folder / "images" if (folder / "images").is_dir() else folder
    if not image_dir.is_dir():
        raise DataError(f"no image folder at {folder}")
    paths = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if (folder / "labels.csv").is_file():
        paths = [p for p in paths if split_of(p.stem) == "train"]
    keypoints: dict[str, np.ndarray] = {}
    if (folder / "keypoints.csv").is_file():
        with open(folder / "keypoints.csv", newline="") as handle:
            for row in csv.DictReader(handle):
                keypoints[row["id"]] = np.array([float(v) for k, v in row.items() if k != "id"]).reshape(3, 2)
    images = []
    for path in paths[:max_images]:
        try:
            image = read_image(path)
        except ImageError as exc:
            logger.warning("skipped %s", exc)
            continue
        if path.stem in keypoints:
            image = canonicalize_by_keypoints(image, *keypoints[path.stem])
        images.append(shrink(image))
    if len(images) < 8:
        raise DataError(f"{image_dir}: {len(images)} readable images; the orientation model needs at least 8")
    logger.info("orientation training: %d images from %s (%s)", len(images), image_dir,
                "turned into the canonical pose by key points" if keypoints else "taken as canonical")
    return images


def random_pose(rng: np.random.Generator) -> Pose:
    return Pose(int(rng.integers(4)), bool(rng.random() < 0.5), bool(rng.random() < 0.5),
                float(rng.uniform(-ANGLE_RANGE, ANGLE_RANGE)))


def make_batch(images: list[np.ndarray], indices: np.ndarray, size: int,
               rng: np.random.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Posed, randomly acquired inputs and the pose targets."""
    inputs, poses = [], []
    for i in indices:
        pose = random_pose(rng)
        # mirrored edges, not a constant, fill the corners a small turn opens: black corners would tell the network
        # the polarity (they turn white when inverted), a shortcut that fails on real, brightly collimated films
        inputs.append(network_input(apply_pose(photometric_mix(images[i], rng), pose, fill=None), size))
        poses.append(pose)
    x = torch.from_numpy(np.stack(inputs))[:, None]
    targets = {"turns": torch.tensor([p.quarter_turns for p in poses]),
               "mirrored": torch.tensor([int(p.mirrored) for p in poses]),
               "inverted": torch.tensor([int(p.inverted) for p in poses]),
               "angle": torch.tensor([p.angle_deg / ANGLE_SCALE for p in poses], dtype=torch.float32)}
    return x, targets


def _loss(outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
    ce = nn.functional.cross_entropy
    return (ce(outputs["turns"], targets["turns"]) + ce(outputs["mirrored"], targets["mirrored"])
            + ce(outputs["inverted"], targets["inverted"])
            + nn.functional.smooth_l1_loss(outputs["angle"], targets["angle"]))


@torch.inference_mode()
def _accuracy(net: OrientationNet, images: list[np.ndarray], size: int, seed: int) -> dict[str, float]:
    """Accuracy of each head on one fixed draw of poses over ``images``."""
    net.eval()
    x, targets = make_batch(images, np.arange(len(images)), size, np.random.default_rng(seed + 10_000))
    out = net(x)
    scores = {name: float((out[name].argmax(1) == targets[name]).float().mean())
              for name in ("turns", "mirrored", "inverted")}
    scores["angle_mae_deg"] = float((out["angle"] - targets["angle"]).abs().mean() * ANGLE_SCALE)
    net.train()
    return scores


def train_orientation(folders: list[Path], out: Path, config: OrientationTrainConfig) -> dict[str, object]:
    """Train on the images of ``folders`` (up to ``max_images`` from each) and write the weights to ``out``.

    Returns the metadata saved with the weights (data, budget, held-out accuracy of each head).
    """
    per_folder = [load_canonical_images(folder, config.max_images) for folder in folders]
    held_out = [image for images in per_folder for image in images[:max(2, len(images) // 10)]]
    train = [image for images in per_folder for image in images[max(2, len(images) // 10):]]
    return fit_orientation(train, held_out, out, config, trained_on=[str(folder) for folder in folders])


def fit_orientation(train: list[np.ndarray], held_out: list[np.ndarray], out: Path, config: OrientationTrainConfig,
                    trained_on: list[str], init: Path | None = None) -> dict[str, object]:
    """Fit the four heads on ``train`` (canonical images), starting from the weights in ``init`` when given.

    Returns the metadata saved with the weights in ``out`` (data, budget, held-out accuracy of each head).
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    net = OrientationModel.load(init).net if init is not None else OrientationNet(config.input_size, config.width)
    size = net.size

    def batch_loss() -> torch.Tensor:
        x, targets = make_batch(train, rng.integers(len(train), size=config.batch_size), size, rng)
        return _loss(net(x), targets)

    seconds = fit_steps(net, batch_loss, config.steps, config.lr)
    accuracy = _accuracy(net, held_out, size, config.seed)
    metadata = {"trained_on": trained_on, "n_images": len(train), "n_held_out": len(held_out),
                "config": asdict(config), "initialised_from": str(init) if init else None,
                "held_out_accuracy": accuracy, "train_seconds": round(seconds, 1)}
    save_orientation(out, net, metadata)
    logger.info("held-out accuracy %s; wrote %s", accuracy, out)
    return metadata
