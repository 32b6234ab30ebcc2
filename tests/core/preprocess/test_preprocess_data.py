"""Preprocessing where images are read: refusals counted with their reason, canonical images, cache keys."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.data import SiteDataConfig, load_site
from core.data.cache import SiteDataCache
from core.preprocess import Pose, PreprocessConfig, apply_pose


def _site(root: Path, images: dict[str, np.ndarray]) -> SiteDataConfig:
    (root / "images").mkdir(parents=True)
    with open(root / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "boneage", "male"])
        for i, (image_id, pixels) in enumerate(images.items()):
            Image.fromarray(np.rint(pixels * 255).astype(np.uint8)).save(root / "images" / f"{image_id}.png")
            writer.writerow([image_id, 24 + 6 * i, i % 2 == 0])
    return SiteDataConfig(root)


@pytest.fixture
def site(tmp_path: Path, phantom_hands) -> SiteDataConfig:
    images = {str(100 + i): s.image for i, s in enumerate(phantom_hands)}
    images.update({str(200 + i): np.random.default_rng(i).random((16, 24)).astype(np.float32) for i in range(3)})
    return _site(tmp_path / "site", images)


def test_refused_images_are_skipped_and_counted_with_their_reason(site: SiteDataConfig) -> None:
    data = load_site(site, 32, None, seed=0, preprocess=PreprocessConfig(canonical=False))
    summary = data.summary()
    assert summary["skipped_by_reason"] == {"refused: too small": 3}
    skips = data.train.skipped + data.val.skipped + data.test.skipped
    assert [s.detail for s in skips] == ["24x16 px, the shorter side needs at least 32"] * 3
    assert sum(summary["split_sizes"].values()) == 6
    plain = load_site(site, 32, None, seed=0)
    assert plain.summary()["n_skipped"] == 0 and sum(plain.summary()["split_sizes"].values()) == 9


def test_a_turned_and_inverted_site_decodes_to_the_same_images(tmp_path: Path, phantom_hands) -> None:
    straight = _site(tmp_path / "a", {str(100 + i): s.image for i, s in enumerate(phantom_hands)})
    turned = _site(tmp_path / "b", {str(100 + i): apply_pose(s.image, Pose(i % 4, i % 2 == 1, i % 3 == 0))
                                    for i, s in enumerate(phantom_hands)})
    config = PreprocessConfig(small_angle=False)
    a = load_site(straight, 32, None, seed=0, preprocess=config)
    b = load_site(turned, 32, None, seed=0, preprocess=config)
    first = np.concatenate([getattr(a, split).images for split in ("train", "val", "test")]).astype(int)
    second = np.concatenate([getattr(b, split).images for split in ("train", "val", "test")]).astype(int)
    assert first.shape == second.shape == (6, 32, 32) and np.abs(first - second).mean() < 2.0


def test_the_decode_cache_keys_on_the_preprocessing(site: SiteDataConfig, tmp_path: Path) -> None:
    cache = SiteDataCache()
    disk = tmp_path / "state"
    plain = cache.load(site, 32, None, seed=0, disk_dir=disk)
    processed = cache.load(site, 32, None, seed=0, disk_dir=disk, preprocess=PreprocessConfig(canonical=False))
    again = cache.load(site, 32, None, seed=0, disk_dir=disk, preprocess=PreprocessConfig(canonical=False))
    assert again is processed and plain is not processed and (cache.misses, cache.hits) == (2, 1)
    assert len(list(disk.glob("decoded_*.npz"))) == 2
    assert processed.summary()["n_skipped"] == 3 and plain.summary()["n_skipped"] == 0
