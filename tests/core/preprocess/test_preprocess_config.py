"""Preprocessing settings: dict and command-line round trips, the weights' SHA-256, checkpoint metadata."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.checkpoint import describe, load_checkpoint, save_checkpoint
from core.errors import ConfigError
from core.model.config import TJNetConfig
from core.model.tjnet import TJNet
from core.preprocess import PreprocessConfig, Preprocessor, preprocess_config_of, preprocessor_for


def test_settings_round_trip_through_a_dict_and_reject_unknown_keys() -> None:
    config = PreprocessConfig(segment=True, clahe_clip=3.0)
    assert PreprocessConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="unknown keys"):
        PreprocessConfig.from_dict({"rotate": True})


def test_command_line_specs() -> None:
    assert PreprocessConfig.parse("none") is None
    assert PreprocessConfig.parse("default") == PreprocessConfig()
    assert PreprocessConfig.parse("default,segment=true,min_side=48") == PreprocessConfig(segment=True, min_side=48)
    for bad in ("maybe", "default,segment=perhaps", "default,colour=1", "default,min_side",
                "default,collimated_mirror_confidence=1.0"):
        with pytest.raises(ConfigError):
            PreprocessConfig.parse(bad)


def test_resolving_records_the_weights_digest_and_notices_another_file(tmp_path: Path) -> None:
    resolved = PreprocessConfig().resolved()
    assert len(resolved.orientation_sha256) == 64 and resolved.orientation_weights == "phantom"
    copy = tmp_path / "orientation.pt"
    copy.write_bytes(resolved.weights_path.read_bytes())
    moved = PreprocessConfig(orientation_weights=str(copy), orientation_sha256=resolved.orientation_sha256)
    assert moved.resolved().orientation_sha256 == resolved.orientation_sha256
    copy.write_bytes(copy.read_bytes() + b"x")
    with pytest.raises(ConfigError, match="not the one"):
        moved.resolved()
    with pytest.raises(ConfigError, match="not found"):
        PreprocessConfig(orientation_weights=str(tmp_path / "missing.pt")).resolved()


def test_a_checkpoint_carries_its_preprocessing(tmp_path: Path) -> None:
    model = TJNet(TJNetConfig(image_size=32, width=0.25))
    config = PreprocessConfig(segment=True).resolved()
    save_checkpoint(tmp_path / "m.pt", model, describe(model, preprocess=config.to_dict()))
    loaded = load_checkpoint(tmp_path / "m.pt")
    assert preprocess_config_of(loaded.metadata) == config
    assert isinstance(preprocessor_for(loaded.metadata), Preprocessor)
    save_checkpoint(tmp_path / "old.pt", model, describe(model))
    assert preprocessor_for(load_checkpoint(tmp_path / "old.pt").metadata) is None
