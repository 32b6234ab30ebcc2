"""Training the orientation model: key-point canonicalisation of phantom images and a tiny end-to-end run."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.preprocess.orientation import OrientationModel
from core.preprocess.orientation_train import OrientationTrainConfig, canonicalize_by_keypoints, train_orientation
from sim.phantom.writer import generate_site


def _centre_error(a: np.ndarray, b: np.ndarray) -> float:
    h, w = a.shape
    return float(np.abs(a[h // 4:-h // 4, w // 4:-w // 4] - b[h // 4:-h // 4, w // 4:-w // 4]).mean())


def test_key_points_turn_a_mirrored_or_turned_phantom_back(phantom_hands) -> None:
    sample = phantom_hands[0]
    tip, thumb, capitate = sample.keypoints
    side = sample.image.shape[1]
    assert _centre_error(canonicalize_by_keypoints(sample.image, tip, thumb, capitate), sample.image) < 0.02
    mirror = lambda p: np.array([side - 1 - p[0], p[1]])  # noqa: E731
    mirrored = canonicalize_by_keypoints(np.ascontiguousarray(sample.image[:, ::-1]), mirror(tip), mirror(thumb),
                                         mirror(capitate))
    assert _centre_error(mirrored, sample.image) < 0.02
    turn = lambda p: np.array([p[1], side - 1 - p[0]])  # noqa: E731  (np.rot90: counter-clockwise)
    turned = canonicalize_by_keypoints(np.ascontiguousarray(np.rot90(sample.image)), turn(tip), turn(thumb),
                                       turn(capitate))
    assert _centre_error(turned, sample.image) < 0.05


def test_a_tiny_training_run_writes_loadable_weights(tmp_path: Path) -> None:
    site = generate_site("rsna", 16, tmp_path / "site", seed=1, image_size=64)
    config = OrientationTrainConfig(steps=2, batch_size=4, max_images=16, threads=1)
    metadata = train_orientation([site], tmp_path / "o.pt", config)
    model = OrientationModel.load(tmp_path / "o.pt")
    assert model.metadata["n_images"] == metadata["n_images"] > 0
    assert set(metadata["held_out_accuracy"]) == {"turns", "mirrored", "inverted", "angle_mae_deg"}
    pose, confidence = model.predict(np.random.default_rng(0).random((70, 50)).astype(np.float32))
    assert 0.0 < confidence <= 1.0 and pose.quarter_turns in range(4)
