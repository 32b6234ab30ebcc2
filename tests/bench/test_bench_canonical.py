"""The section-1 benchmark of issue 23: clean images keep their pose, posed copies come back (phantom images)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.bench_canonical import COPIES, is_identity, run
from core.preprocess import Pose
from sim.phantom.profiles import PRESETS
from sim.phantom.synth import synthesize


@pytest.fixture(scope="module")
def upright(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twenty left hands, fingers up, bone bright, no collimation: what the benchmark's folder must hold."""
    base = PRESETS["rsna"].with_image_size(96)
    profile = replace(base, scanner=replace(base.scanner, inverted_fraction=0.0),
                      acquisition=replace(base.acquisition, rotation_deg=0.0, rotation_90_fraction=0.0,
                                          mirror_fraction=0.0, collimation_fraction=0.0, marker_fraction=0.0))
    root = tmp_path_factory.mktemp("upright")
    for i in range(20):
        image = synthesize(profile, seed=21, index=i).image
        Image.fromarray(np.rint(image * 255).astype(np.uint8)).save(root / f"{i}.png")
    return root


def test_the_copies_are_every_pose_but_the_identity() -> None:
    assert len(set(COPIES)) == 15 and Pose() not in COPIES
    assert all(is_identity(pose, pose) for pose in COPIES)
    assert not any(is_identity(pose, Pose()) for pose in COPIES)


def test_the_packaged_model_keeps_phantom_hands_and_brings_their_copies_back(upright: Path) -> None:
    result = run(upright, "default", seed=0)
    assert result["site_check"]["checked"] and result["n"] == 20
    assert result["clean_kept_pose"] >= 0.95 and result["copies_back_or_refused"] >= 0.9


def test_without_the_orientation_model_nothing_comes_back(upright: Path) -> None:
    result = run(upright, "default,canonical=false", seed=0)
    assert result["clean_kept_pose"] == 1.0 and result["copies_back_or_refused"] == 0.0
