"""BoneAgeDataset, make_loader and load_site: shapes, decode skips, determinism, flips, read-only."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from data_sites import SiteBuilder, hand

from core.data import (AugmentConfig, BoneAgeDataset, DataError, SiteDataConfig, load_manifest, load_site,
                       make_loader)
from core.data.images import CONSTANT, EMPTY, UNREADABLE

SIZE = 32


def records(site: SiteBuilder):
    return load_manifest(SiteDataConfig(site.root)).records


def test_items_have_documented_shapes_dtypes_and_values(png_site: SiteBuilder) -> None:
    dataset = BoneAgeDataset(records(png_site), SIZE)
    item = dataset[3]
    assert item["image"].shape == (1, SIZE, SIZE) and item["image"].dtype == torch.float32
    assert item["male"].shape == () and item["male"].item() == 0.0
    assert item["age"].shape == () and item["age"].item() == 18.0
    # min-max stretched then normalised (x - 0.5) / 0.25: black -2, white +2 (less after resizing)
    assert item["image"].min().item() == -2.0 and 1.8 < item["image"].max().item() <= 2.0
    assert dataset.images.dtype == np.uint8 and dataset.images.nbytes == 40 * SIZE * SIZE


def test_aspect_ratio_is_kept_with_black_padding(site: SiteBuilder) -> None:
    site.image("tall", pixels=0.5 + 0.5 * hand(0, 40, 20))  # never black itself
    site.csv([("tall", 10, 1)])
    image = BoneAgeDataset(records(site), SIZE).images[0]
    assert (image[:, :8] == 0).all() and (image[:, -8:] == 0).all()
    assert (image[:, 9:-9] > 0).all()


def test_images_failing_to_decode_are_skipped_with_reasons(site: SiteBuilder) -> None:
    site.image("good")
    site.raw("corrupt.png", b"garbage" * 20)
    site.raw("empty.png", b"")
    site.image("flat", pixels=np.full((20, 20), 0.7))
    site.csv([("good", 10, 1), ("corrupt", 10, 1), ("empty", 10, 0), ("flat", 10, 0)])
    dataset = BoneAgeDataset(records(site), SIZE)
    assert [r.image_id for r in dataset.records] == ["good"] and len(dataset) == 1
    assert {s.image_id: s.reason for s in dataset.skipped} == {
        "corrupt": UNREADABLE, "empty": EMPTY, "flat": CONSTANT}


def test_augmentation_is_deterministic_per_seed_epoch_and_index(png_site: SiteBuilder) -> None:
    recs = records(png_site)[:6]
    a = BoneAgeDataset(recs, SIZE, AugmentConfig(), seed=1)
    b = BoneAgeDataset(recs, SIZE, AugmentConfig(), seed=1)
    other_seed = BoneAgeDataset(recs, SIZE, AugmentConfig(), seed=2)
    assert a.images.shape[1:] == (37, 37)  # 15% margin for random crops
    first = torch.stack([a[i]["image"] for i in range(6)])
    assert torch.equal(first, torch.stack([b[i]["image"] for i in range(6)]))
    assert torch.equal(first[2], a[2]["image"])  # re-reading an item gives the same image
    assert not torch.equal(first, torch.stack([other_seed[i]["image"] for i in range(6)]))
    a.set_epoch(1)
    assert not torch.equal(first, torch.stack([a[i]["image"] for i in range(6)]))


def test_loader_batches_repeat_for_a_seed_also_with_workers(png_site: SiteBuilder) -> None:
    dataset = BoneAgeDataset(records(png_site), SIZE, AugmentConfig(), seed=0)

    def epoch_batches(num_workers: int) -> list[torch.Tensor]:
        loader = make_loader(dataset, batch_size=8, shuffle=True, seed=5, num_workers=num_workers)
        return [torch.cat([batch["image"].flatten(1), batch["age"][:, None]], 1) for batch in loader]

    serial = epoch_batches(0)
    assert len(serial) == 5
    assert all(torch.equal(x, y) for x, y in zip(serial, epoch_batches(0)))
    assert all(torch.equal(x, y) for x, y in zip(serial, epoch_batches(2)))


def left_minus_right(image: torch.Tensor) -> float:
    half = image.shape[-1] // 2
    return (image[..., :half].mean() - image[..., half:].mean()).item()


def test_flips_are_off_by_default(site: SiteBuilder) -> None:
    pixels = np.tile(np.linspace(1.0, 0.0, 40), (40, 1))  # bright on the left
    site.image("a", pixels=pixels)
    site.csv([("a", 10, 1)])
    assert AugmentConfig().hflip is False
    default = BoneAgeDataset(records(site), SIZE, AugmentConfig())
    flipping = BoneAgeDataset(records(site), SIZE, AugmentConfig(hflip=True))
    default_sides, flipping_sides = [], []
    for epoch in range(20):
        default.set_epoch(epoch)
        flipping.set_epoch(epoch)
        default_sides.append(left_minus_right(default[0]["image"]) > 0)
        flipping_sides.append(left_minus_right(flipping[0]["image"]) > 0)
    assert all(default_sides)
    assert not all(flipping_sides)


def test_zero_augmentation_is_identity(png_site: SiteBuilder) -> None:
    recs = records(png_site)[:3]
    off = AugmentConfig(crop=False, rotate_deg=0, scale=0, brightness=0, contrast=0)
    plain, augmented = BoneAgeDataset(recs, SIZE), BoneAgeDataset(recs, SIZE, off)
    assert all(torch.equal(plain[i]["image"], augmented[i]["image"]) for i in range(3))


def folder_digest(root: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_load_site_splits_summarises_and_leaves_the_folder_untouched(png_site: SiteBuilder) -> None:
    png_site.image("9000", "dicom1")
    png_site.image("9001", "png16")
    png_site.image("unlabelled")
    png_site.raw("9002.png", b"corrupt")
    rows = [(1000 + i, 6 * i, i % 2 == 0) for i in range(40)]
    png_site.csv(rows + [(9000, 100, "M"), (9001, 100, "F"), (9002, 100, "F"), (9003, 500, "F")])
    before = folder_digest(png_site.root)
    site = load_site(SiteDataConfig(png_site.root), SIZE, AugmentConfig(), seed=0)
    assert folder_digest(png_site.root) == before
    summary = site.summary()
    assert summary["n_rows"] == 44 and summary["n_usable"] == 42
    assert summary["skipped_by_reason"] == {"age out of range": 1, UNREADABLE: 1}
    assert summary["n_skipped_decode"] == 1 and summary["n_images_without_label"] == 1
    assert sum(summary["split_sizes"].values()) == 42
    assert site.train.images.shape[1] == 37 and site.val.images.shape[1] == SIZE


def test_invalid_augment_config_is_rejected() -> None:
    with pytest.raises(DataError, match="augmentation limits"):
        AugmentConfig(scale=1.5)
