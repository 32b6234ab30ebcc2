"""Train the key-point localiser on reader-drawn boxes, and measure it against the readers' own spread.

Boxes come as in rsna-roi's ``boxes.csv``: ``id, annotation, label, width, height, x0, y0, x1, y1`` with the box as
fractions of the image (labels DIP, PIP, MCP, Radius, Ulna, Wrist). A key point is a box's centre; ``mcp3`` is the
third MCP box from the image's left (little, ring, middle finger of a left hand seen postero-anterior). Images
annotated under ``annotation = train`` are trained on; images annotated twice (``eval-expert`` and
``eval-nonexpert``) are held out: the localiser's error against the expert is set beside the non-expert's.
"""

from __future__ import annotations

import csv
import logging
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from core.data.config import DataError
from core.data.images import ImageError, read_image
from core.data.manifest import IMAGE_EXTENSIONS
from core.preprocess.small_nets import fit_steps
from core.preprocess.landmarks import (KEYPOINTS, Localiser, LocaliserNet, expected_points, localiser_input,
                                       save_localiser)
from core.preprocess.register import MCP3_Y, WRIST_Y, localised_keypoints, registration_matrix
from core.preprocess.stress import photometric_mix
from core.stats.bootstrap import bootstrap_mean, paired_difference

logger = logging.getLogger(__name__)

TRAIN, EXPERT, SECOND_READER = "train", "eval-expert", "eval-nonexpert"
_LABELS = {"Wrist": "wrist", "Radius": "radius", "Ulna": "ulna"}


@dataclass(frozen=True)
class LocaliserTrainConfig:
    """Budget and augmentation of the localiser's training."""

    steps: int = 1500
    batch_size: int = 16
    lr: float = 2e-3
    size: int = 64
    width: int = 16
    max_shift: float = 0.06  # random translation, share of the side
    max_angle: float = 12.0  # random rotation, degrees
    seed: int = 0
    threads: int | None = None


def read_boxes(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """{annotation: {image id: (len(KEYPOINTS), 2) centres as fractions}}; images missing a key point are left out."""
    boxes: dict[tuple[str, str], dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    try:
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                centre = ((float(row["x0"]) + float(row["x1"])) / 2, (float(row["y0"]) + float(row["y1"])) / 2)
                boxes[(row["annotation"], row["id"])][row["label"]].append(centre)
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"cannot read boxes from {path}: {type(exc).__name__}: {exc}") from None
    out: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
    for (annotation, image_id), labels in boxes.items():
        points = {name: labels[label][0] for label, name in _LABELS.items() if labels.get(label)}
        mcp = sorted(labels.get("MCP", []))
        if len(mcp) >= 3:
            points["mcp3"] = mcp[2]
        if len(points) == len(KEYPOINTS):
            out[annotation][image_id] = np.array([points[name] for name in KEYPOINTS])
    return dict(out)


def _image_path(data: Path, image_id: str) -> Path | None:
    folder = data / "images" if (data / "images").is_dir() else data
    for extension in IMAGE_EXTENSIONS:
        if (folder / f"{image_id}{extension}").is_file():
            return folder / f"{image_id}{extension}"
    return None


def load_annotated(data: Path, points: dict[str, np.ndarray]) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    """The readable images of ``data`` with key points (squeezed to 128 px squares: the points are fractions)."""
    images, targets, ids = [], [], []
    for image_id, target in sorted(points.items()):
        path = _image_path(Path(data), image_id)
        if path is None:
            continue
        try:
            image = read_image(path)
        except ImageError as exc:
            logger.warning("skipped %s", exc)
            continue
        images.append(cv2.resize(image, (128, 128), interpolation=cv2.INTER_AREA))
        targets.append(target)
        ids.append(image_id)
    return images, np.array(targets).reshape(-1, len(KEYPOINTS), 2), ids


def _augment(image: np.ndarray, points: np.ndarray, config: LocaliserTrainConfig,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random small similarity (image and points together) and a random acquisition; never a mirror."""
    side = image.shape[0]
    angle = rng.uniform(-config.max_angle, config.max_angle)
    matrix = cv2.getRotationMatrix2D((side / 2, side / 2), angle, rng.uniform(0.9, 1.1))
    matrix[:, 2] += rng.uniform(-config.max_shift, config.max_shift, 2) * side
    moved = cv2.warpAffine(image, matrix, (side, side), borderMode=cv2.BORDER_REPLICATE)
    xy = points * side @ matrix[:, :2].T + matrix[:, 2]
    return photometric_mix(moved, rng), xy / side


def train_localiser(data: Path, boxes: Path, out: Path, config: LocaliserTrainConfig) -> dict[str, object]:
    """Train on the ``train`` annotations, write ``out``, and measure on the twice-read images.

    Returns the metadata saved with the weights (budget, held-out errors and the reader-to-reader spread).
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    annotations = read_boxes(boxes)
    held_out = set(annotations.get(EXPERT, {})) | set(annotations.get(SECOND_READER, {}))
    train_points = {k: v for k, v in annotations.get(TRAIN, {}).items() if k not in held_out}
    images, targets, _ = load_annotated(data, train_points)
    if len(images) < 8:
        raise DataError(f"{data}: {len(images)} images with boxes in {boxes}; the localiser needs at least 8")
    net = LocaliserNet(config.size, config.width)

    def batch_loss() -> torch.Tensor:
        batch = [_augment(images[i], targets[i], config, rng)
                 for i in rng.integers(len(images), size=config.batch_size)]
        x = torch.from_numpy(np.stack([localiser_input(image, config.size) for image, _ in batch]))[:, None]
        y = torch.from_numpy(np.stack([points for _, points in batch])).float()
        return (expected_points(net(x)) - y).abs().mean()

    seconds = fit_steps(net, batch_loss, config.steps, config.lr)
    metadata = {"trained_on": f"{len(images)} images of {data} with boxes from {boxes}", "n_images": len(images),
                "config": asdict(config), "train_seconds": round(seconds, 1)}
    save_localiser(out, net, metadata)
    if annotations.get(EXPERT):
        metadata["held_out"] = evaluate_localiser(Localiser.load(out), data, annotations)
        save_localiser(out, net, metadata)
    logger.info("wrote %s", out)
    return metadata


def evaluate_localiser(localiser: Localiser, data: Path, annotations: dict[str, dict[str, np.ndarray]],
                       seed: int = 0) -> dict[str, object]:
    """Distance to the expert's centres (share of the image side, i.e. rsna100 pixels / 100) on the twice-read
    images: the localiser's and the second reader's, per key point, mean with a 95 % bootstrap interval."""
    expert, second = annotations[EXPERT], annotations.get(SECOND_READER, {})
    images, targets, ids = load_annotated(data, expert)
    found = np.stack([localiser.predict(image) for image in images]) if images else np.zeros((0, len(KEYPOINTS), 2))
    model_error = np.linalg.norm(found - targets, axis=2)
    result: dict[str, object] = {"n_images": len(ids),
                                 "registration": _registration_error(found, targets, ids, second, seed)}
    for k, name in enumerate(KEYPOINTS):
        row = {"localiser": _summary(model_error[:, k], seed)}
        paired = [i for i, image_id in enumerate(ids) if image_id in second]
        if paired:
            reader = np.array([np.linalg.norm(second[ids[i]][k] - targets[i][k]) for i in paired])
            row["second_reader"] = _summary(reader, seed)
            difference = paired_difference(model_error[paired, k], reader, seed=seed)
            row["localiser_minus_reader"] = {"mean": round(difference.estimate, 4),
                                             "ci95": [round(difference.low, 4), round(difference.high, 4)]}
            row["n_twice_read"] = len(paired)
        result[name] = row
    return result


def _landing_error(points: np.ndarray, truth: np.ndarray) -> float:
    """Where the true wrist and third MCP land when registered on ``points`` (fractions of a square image): the
    larger of their distances to their places, as a share of the registered square's side."""
    wrist, mcp3 = KEYPOINTS.index("wrist"), KEYPOINTS.index("mcp3")
    matrix = registration_matrix(localised_keypoints(tuple(points[mcp3]), tuple(points[wrist])), 1, MCP3_Y, WRIST_Y)
    landed = truth[[mcp3, wrist]] @ matrix[:, :2].T + matrix[:, 2]
    return float(np.linalg.norm(landed - [[0.5, MCP3_Y], [0.5, WRIST_Y]], axis=1).max())


def _registration_error(found: np.ndarray, targets: np.ndarray, ids: list[str], second: dict[str, np.ndarray],
                        seed: int) -> dict[str, object]:
    """Registration on the localiser's points (and on the second reader's) judged by the expert's points."""
    localiser = np.array([_landing_error(f, t) for f, t in zip(found, targets)])
    result: dict[str, object] = {"localiser": _summary(localiser, seed),
                                 "localiser_share_over_5pct": round(float(np.mean(localiser > 0.05)), 4)}
    paired = [i for i, image_id in enumerate(ids) if image_id in second]
    if paired:
        reader = np.array([_landing_error(second[ids[i]], targets[i]) for i in paired])
        result["second_reader"] = _summary(reader, seed)
        result["second_reader_share_over_5pct"] = round(float(np.mean(reader > 0.05)), 4)
    return result


def _summary(errors: np.ndarray, seed: int) -> dict[str, float]:
    mean = bootstrap_mean(errors, seed=seed)
    return {"mean": round(mean.estimate, 4), "ci95": [round(mean.low, 4), round(mean.high, 4)],
            "median": round(float(np.median(errors)), 4), "p90": round(float(np.percentile(errors, 90)), 4)}
