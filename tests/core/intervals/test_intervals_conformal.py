"""Split-conformal intervals: the quantile, coverage on a phantom site, pretraining and site re-calibration."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from client.__main__ import main as client_main
from core.stages.central import PretrainJob, pretrain
from core.checkpoint import describe, load_checkpoint, save_checkpoint
from core.intervals.conformal import (ConformalError, conformal_quantile, fit_conformal, measure_coverage,
                            minimum_calibration_size, predictions_of)
from core.data import BoneAgeDataset, SiteDataConfig, load_site
from core.data.dataset import make_loader
from core.model.config import TJNetConfig
from core.model.tjnet import TJNet
from core.stages.site_finetune import FinetuneConfig, finetune_site
from core.train.training import TrainConfig, predict
from core.predict.tta import TTAConfig
from sim.phantom.writer import generate_site

N_IMAGES = 200


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_site("rsna", N_IMAGES, tmp_path_factory.mktemp("conformal") / "site", seed=5, image_size=48)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(1)
    model = TJNet(TJNetConfig(image_size=48, width=0.25))
    return save_checkpoint(tmp_path_factory.mktemp("m") / "model.pt", model, describe(model))


def test_quantile_is_the_finite_sample_rank() -> None:
    scores = np.arange(1.0, 20.0)  # n = 19: rank ceil(20 * 0.9) = 18
    assert conformal_quantile(scores[::-1], 0.9) == 18.0
    assert minimum_calibration_size(0.9) == 9
    assert conformal_quantile(np.arange(9.0), 0.9) == 8.0
    with pytest.raises(ConformalError, match="at least 9"):
        conformal_quantile(np.arange(8.0), 0.9)


def test_ninety_percent_interval_covers_ninety_percent_on_a_phantom_site(phantom: Path, model_path: Path) -> None:
    """Over many random calibration/test halves of one phantom site, mean coverage is ceil(0.9 (n+1))/(n+1)."""
    model = load_checkpoint(model_path).model
    site = load_site(SiteDataConfig(phantom), 48, None, seed=0)
    records = site.train.records + site.val.records + site.test.records
    predicted, true = predictions_of(model, BoneAgeDataset(records, 48), torch.device("cpu"))
    errors = np.abs(true - predicted)
    rng = np.random.default_rng(0)
    n_cal = len(errors) // 2
    covered, widths = [], []
    for _ in range(400):
        order = rng.permutation(len(errors))
        halfwidth = conformal_quantile(errors[order[:n_cal]], 0.9)
        report = measure_coverage(predicted[order[n_cal:]], true[order[n_cal:]], halfwidth, 228.0)
        covered.append(report.covered)
        widths.append(report.mean_width_months)
    expected = np.ceil(0.9 * (n_cal + 1)) / (n_cal + 1)
    assert 0.88 <= np.mean(covered) <= 0.92
    assert abs(np.mean(covered) - expected) < 0.006
    assert 0 < np.mean(widths) < 228


def test_fit_gives_both_halfwidths_and_refuses_tiny_splits(phantom: Path, model_path: Path) -> None:
    model = load_checkpoint(model_path).model
    site = load_site(SiteDataConfig(phantom), 48, None, seed=0, splits=("val",))
    interval = fit_conformal(model, site.val, torch.device("cpu"), 0.9)
    assert interval.n == len(site.val) and interval.split == "val"
    assert interval.halfwidth_months > 0 and interval.halfwidth_months_sex_from_head > 0
    with pytest.raises(ConformalError, match="at least 9"):
        fit_conformal(model, BoneAgeDataset(site.val.records[:5], 48), torch.device("cpu"), 0.9)


def test_site_recalibration_writes_a_new_checkpoint(phantom: Path, model_path: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    before = model_path.read_bytes()
    out = tmp_path / "calibrated.pt"
    code = client_main(["calibrate", "--model", str(model_path), "--data", str(phantom), "--out", str(out), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and model_path.read_bytes() == before
    saved = load_checkpoint(out).metadata["conformal"]
    assert saved == result["conformal"] and saved["source"] == str(phantom)
    for name in ("sex given", "sex from head"):
        assert result["test"][name]["n"] > 0 and 0.0 <= result["test"][name]["covered"] <= 1.0
    code = client_main(["calibrate", "--model", str(model_path), "--data", str(phantom), "--out", str(model_path)])
    assert code == 2 and "never overwritten" in capsys.readouterr().err


def test_pretraining_stores_the_interval(phantom: Path, tmp_path: Path) -> None:
    job = PretrainJob(data=SiteDataConfig(phantom), out=tmp_path / "pre.pt",
                      model_config={"image_size": 48, "width": 0.25}, augment=None,
                      train=TrainConfig(epochs=1, batch_size=16, device="cpu", progress=False))
    pretrain(job)
    saved = load_checkpoint(tmp_path / "pre.pt").metadata["conformal"]
    val = load_site(SiteDataConfig(phantom), 48, None, seed=0, splits=("val",)).val
    assert saved["n"] == len(val) and saved["split"] == "val" and saved["coverage"] == 0.9
    assert saved["halfwidth_months"] > 0


def test_site_finetuning_stores_an_interval_of_its_own(phantom: Path, model_path: Path, tmp_path: Path) -> None:
    config = FinetuneConfig(freeze="1-4", epochs=1, device="cpu", progress=False)
    metadata = finetune_site(model_path, SiteDataConfig(phantom), tmp_path / "site.pt", config)
    val = load_site(SiteDataConfig(phantom), 48, None, seed=0, splits=("val",)).val
    assert metadata["conformal"]["n"] == len(val) and metadata["conformal"]["source"] == str(phantom)
    assert load_checkpoint(tmp_path / "site.pt").metadata["conformal"] == metadata["conformal"]


def test_the_interval_of_a_model_with_test_time_augmentation_is_fitted_on_its_averaged_ages(
        phantom: Path, model_path: Path) -> None:
    model = load_checkpoint(model_path).model
    site = load_site(SiteDataConfig(phantom), 48, None, seed=0, splits=("val",))
    tta = TTAConfig(shift=0.1, scale=0.1)
    averaged = predict(model, make_loader(site.val, 64, shuffle=False, seed=0), torch.device("cpu"), tta=tta)
    interval = fit_conformal(model, site.val, torch.device("cpu"), 0.9, tta=tta)
    errors = np.abs(averaged.true_months - averaged.predicted_months)
    assert interval.halfwidth_months == pytest.approx(conformal_quantile(errors, 0.9), abs=1e-3)
