"""Checkpoints: round trip with metadata, frozen blocks restored, clear errors."""

import pytest
import torch

from core.checkpoint import CheckpointCache, CheckpointError, describe, file_sha256, load_checkpoint, save_checkpoint
from core.model.baseline import ResNetConfig, ResNetRegressor
from core.model.config import TJNetConfig
from core.model.freeze import freeze_blocks
from core.model.tjnet import TJNet


def test_round_trip_keeps_weights_config_and_frozen_blocks(tmp_path):
    model = TJNet(TJNetConfig(image_size=64, width=0.25, use_cbam=False))
    freeze_blocks(model, (1, 2, 3))
    path = save_checkpoint(tmp_path / "m.pt", model, describe(model, seed=7, data={"n": 3}))
    loaded = load_checkpoint(path)
    assert loaded.model.config == model.config
    assert loaded.model.frozen_blocks == (1, 2, 3)
    assert not any(p.requires_grad for p in loaded.model.block1.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.model.state_dict()[key])
    meta = loaded.metadata
    assert meta["seed"] == 7 and meta["data"] == {"n": 3}
    assert meta["block_names"][0] == "block1" and len(meta["class_grid_months"]) == 77
    assert "torch" in meta["package_versions"]
    assert not (tmp_path / "m.pt.tmp").exists()


def test_the_regression_baseline_round_trips(tmp_path):
    model = ResNetRegressor(ResNetConfig(image_size=64, width=0.25))
    loaded = load_checkpoint(save_checkpoint(tmp_path / "r.pt", model, describe(model)))
    assert isinstance(loaded.model, ResNetRegressor)


def test_missing_and_foreign_files_give_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an OssiFL checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_the_checkpoint_cache_gives_private_copies_and_rereads_a_rewritten_file(tmp_path):
    torch.manual_seed(0)
    model = TJNet(TJNetConfig(image_size=48, width=0.25))
    path = save_checkpoint(tmp_path / "m.pt", model, describe(model, seed=1))
    cache = CheckpointCache()
    first, digest = cache.load(path)
    assert digest == file_sha256(path) and first.metadata["seed"] == 1
    with torch.no_grad():
        next(first.model.parameters()).add_(1.0)  # a site training its copy
    first.metadata["seed"] = 99
    second, _ = cache.load(path)
    assert (cache.hits, cache.misses) == (1, 1) and second.metadata["seed"] == 1
    for key, value in model.state_dict().items():
        assert torch.equal(value, second.model.state_dict()[key]), key
    freeze_blocks(model, (1, 2))
    save_checkpoint(path, model, describe(model, seed=2))  # replaced: new inode and mtime
    third, new_digest = cache.load(path)
    assert cache.misses == 2 and third.metadata["seed"] == 2 and third.model.frozen_blocks == (1, 2)
    assert new_digest == file_sha256(path) != digest
    with pytest.raises(CheckpointError, match="not found"):
        cache.load(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="cannot read"):
        cache.load(tmp_path / "junk.pt")
