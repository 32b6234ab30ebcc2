"""`python -m server pretrain --region`: the checkpoint records the crop, `evaluate` reads the same crop."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from core.stages.central import evaluate_checkpoint
from core.train.evaluation import evaluate_model
from core.checkpoint import load_checkpoint, save_checkpoint
from core.data import SiteDataConfig, load_site
from core.preprocess import PreprocessConfig, preprocess_config_of
from core.train.training import resolve_device
from core.predict.tta import tta_config_of


def test_the_checkpoint_records_the_region_and_keeps_it_through_a_round_trip(region_models, tmp_path: Path) -> None:
    loaded = load_checkpoint(region_models.carpal)
    settings = preprocess_config_of(loaded.metadata)
    assert settings.noise_limit > 0  # the noise gate's limit, measured on the training folder
    assert replace(settings, noise_limit=0.0) == \
        PreprocessConfig(canonical=False, mask="threshold").for_region("carpal").resolved()
    copy = save_checkpoint(tmp_path / "copy.pt", loaded.model, loaded.metadata)
    assert preprocess_config_of(load_checkpoint(copy).metadata) == settings
    assert preprocess_config_of(load_checkpoint(region_models.whole).metadata) is None


def test_evaluate_reads_the_recorded_crop_and_counts_refusals(region_models, tmp_path: Path) -> None:
    site = SiteDataConfig(region_models.site)
    metrics = evaluate_checkpoint(region_models.carpal, site, "test", "cpu")
    loaded = load_checkpoint(region_models.carpal)
    crops = load_site(site, 32, None, seed=0, splits=("test",), preprocess=preprocess_config_of(loaded.metadata))
    by_hand = evaluate_model(loaded.model, crops.test, resolve_device("cpu"), tta=tta_config_of(loaded.metadata))
    assert metrics["n"] == len(crops.test) and metrics["mad_months"] == pytest.approx(by_hand["mad_months"])
    # without the orientation model the phantom's inverted hands are refused (no hand), each counted
    assert sum(metrics["skipped_by_reason"].values()) >= len(crops.test.skipped) >= 1
    # the same weights without the recorded preprocessing read whole images: other inputs, other figures
    stripped = dict(loaded.metadata)
    stripped.pop("preprocess")
    blind = save_checkpoint(tmp_path / "blind.pt", loaded.model, stripped)
    other = evaluate_checkpoint(blind, site, "test", "cpu")
    assert other["n"] > metrics["n"] and not np.isclose(other["mad_months"], metrics["mad_months"])
