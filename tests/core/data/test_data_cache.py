"""SiteDataCache: decodes once, re-decodes when the files change, stays within its budget, never writes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from data_sites import SiteBuilder, hand

from core.data import AugmentConfig, SiteDataConfig, load_site
from core.data.cache import SiteDataCache, cache_budget_from_env

SIZE = 32


def _touch_later(path: Path) -> None:
    """Move a file's modification time forward (file systems with coarse clocks need the nudge)."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_repeated_request_returns_the_decoded_splits_without_decoding(png_site: SiteBuilder) -> None:
    cache = SiteDataCache()
    config = SiteDataConfig(png_site.root)
    first = cache.load(config, SIZE, AugmentConfig(), seed=0, splits=("train", "val"))
    again = cache.load(config, SIZE, AugmentConfig(), seed=0, splits=("train", "val"))
    assert again is first and (cache.hits, cache.misses) == (1, 1)
    fresh = load_site(config, SIZE, AugmentConfig(), seed=0, splits=("train", "val"))
    assert np.array_equal(first.train.images, fresh.train.images) and len(first.test) == 0
    assert cache.nbytes == first.train.images.nbytes + first.val.images.nbytes


def test_other_settings_are_separate_entries(png_site: SiteBuilder) -> None:
    cache = SiteDataCache()
    config = SiteDataConfig(png_site.root)
    train = cache.load(config, SIZE, AugmentConfig(), seed=0, splits=("train",))
    test = cache.load(config, SIZE, None, seed=0, splits=("test",))
    other_size = cache.load(config, SIZE + 8, AugmentConfig(), seed=0, splits=("train",))
    assert cache.misses == 3 and len(train.test) == 0 and len(test.train) == 0
    assert other_size.train.images.shape[1] > train.train.images.shape[1]


def test_a_replaced_image_or_an_edited_manifest_is_decoded_again(png_site: SiteBuilder) -> None:
    cache = SiteDataCache()
    config = SiteDataConfig(png_site.root)
    before = cache.load(config, SIZE, None, seed=0)
    first_id = before.train.records[0].image_id
    replaced = png_site.image(first_id, pixels=1.0 - hand(99))
    _touch_later(replaced)
    after_image = cache.load(config, SIZE, None, seed=0)
    assert after_image is not before and cache.misses == 2
    assert not np.array_equal(after_image.train.images[0], before.train.images[0])
    csv = png_site.root / "labels.csv"
    csv.write_text(csv.read_text().replace(f"{first_id},", f"{first_id}x,", 1))  # one row now has no image
    _touch_later(csv)
    after_csv = cache.load(config, SIZE, None, seed=0)
    assert cache.misses == 3 and len(after_csv.manifest.records) == len(before.manifest.records) - 1


def test_the_budget_evicts_the_least_recently_used_and_zero_turns_it_off(png_site: SiteBuilder,
                                                                         tmp_path: Path) -> None:
    config = SiteDataConfig(png_site.root)
    one_entry = load_site(config, SIZE, None, seed=0).train.images.nbytes * 2  # room for one full site
    cache = SiteDataCache(max_bytes=one_entry)
    cache.load(config, SIZE, None, seed=0)
    cache.load(config, SIZE, None, seed=1)  # a second entry pushes the first out
    cache.load(config, SIZE, None, seed=1)
    cache.load(config, SIZE, None, seed=0)
    assert (cache.hits, cache.misses) == (1, 3) and cache.nbytes <= one_entry
    off = SiteDataCache(max_bytes=0)
    off.load(config, SIZE, None, seed=0)
    off.load(config, SIZE, None, seed=0)
    assert (off.hits, off.misses, off.nbytes) == (0, 2, 0)
    with pytest.raises(ValueError, match=">= 0"):
        SiteDataCache(max_bytes=-1)


def test_the_site_folder_is_only_read(png_site: SiteBuilder) -> None:
    before = _digests(png_site.root)
    cache = SiteDataCache()
    for _ in range(2):
        cache.load(SiteDataConfig(png_site.root), SIZE, AugmentConfig(), seed=0)
    assert _digests(png_site.root) == before


def test_the_budget_comes_from_the_environment_with_a_warning_for_nonsense(monkeypatch, caplog) -> None:
    monkeypatch.setenv("OSSIFL_DECODE_CACHE_MB", "64")
    assert cache_budget_from_env() == 64_000_000
    monkeypatch.setenv("OSSIFL_DECODE_CACHE_MB", "0")
    assert cache_budget_from_env() == 0
    monkeypatch.setenv("OSSIFL_DECODE_CACHE_MB", "lots")
    assert cache_budget_from_env() == 2 << 30
    assert "not a number of megabytes" in caplog.text


def test_a_new_process_reads_the_decoded_site_from_disk_instead_of_decoding(png_site: SiteBuilder, tmp_path: Path,
                                                                          monkeypatch) -> None:
    config, disk = SiteDataConfig(png_site.root), tmp_path / "state" / "decoded"
    first = SiteDataCache().load(config, SIZE, AugmentConfig(), seed=3, splits=("train", "val"), disk_dir=disk)
    [stored] = list(disk.iterdir())
    assert stored.suffix == ".npz" and stored.stat().st_mode & 0o777 == 0o600

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the files did not change")

    monkeypatch.setattr("core.data.cache.load_site", no_decoding)
    fresh = SiteDataCache()  # a new process: nothing in memory
    again = fresh.load(config, SIZE, AugmentConfig(), seed=3, splits=("train", "val"), disk_dir=disk)
    assert fresh.misses == 0 and again is not first
    assert np.array_equal(again.train.images, first.train.images) and again.train.records == first.train.records
    assert again.summary() == first.summary() and len(again.test) == 0
    again.train.set_epoch(2), first.train.set_epoch(2)
    assert torch.equal(again.train[5]["image"], first.train[5]["image"])  # same augmentation: same seed
    monkeypatch.undo()
    _touch_later(png_site.root / "labels.csv")  # the site's files changed: the stored entry no longer counts
    changed = SiteDataCache()
    changed.load(config, SIZE, AugmentConfig(), seed=3, splits=("train", "val"), disk_dir=disk)
    assert changed.misses == 1 and len(list(disk.iterdir())) == 1


def test_an_unreadable_stored_entry_is_decoded_again_with_a_warning(png_site: SiteBuilder, tmp_path: Path,
                                                                  caplog) -> None:
    config, disk = SiteDataConfig(png_site.root), tmp_path / "decoded"
    SiteDataCache().load(config, SIZE, None, seed=0, disk_dir=disk)
    [stored] = list(disk.iterdir())
    stored.write_bytes(stored.read_bytes()[:100])  # truncated
    cache = SiteDataCache()
    data = cache.load(config, SIZE, None, seed=0, disk_dir=disk)
    assert cache.misses == 1 and len(data.train) > 0 and "cannot read" in caplog.text
    assert SiteDataCache().load(config, SIZE, None, seed=0, disk_dir=disk).train.records == data.train.records
