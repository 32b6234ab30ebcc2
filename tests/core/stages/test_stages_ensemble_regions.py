"""An ensemble of a whole-hand model and a region model: each member reads its own crop, in the fit, in `evaluate`
and in `predict`; the paths that read one preprocessing refuse it in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from client.__main__ import main as client_main
from client.predict import PredictSettings, Predictor
from client.worklist import PatientFacts, WorkItem
from core.stages.central import evaluate_checkpoint
from core.checkpoint import load_checkpoint
from core.data import SiteDataConfig, load_site, read_image
from core.stages.ensemble import EnsembleJob, build_ensemble
from core.errors import ConfigError
from core.predict.inference import model_input
from core.preprocess import Preprocessor, preprocess_config_of, views_of
from core.predict.tta import PRETRAIN_TTA, forward_tta, tta_config_of


@pytest.fixture(scope="module")
def ensemble(region_models, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The members are one-epoch 32 px models and the phantom's val split has 8 images: a fit the real command
    rightly refuses as not generalising (tested in test_stages_ensemble.py). These tests are about which crop each
    member reads, so the generalisation check is switched off here, and only here."""
    out = tmp_path_factory.mktemp("ensemble") / "ensemble.pt"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("core.stages.ensemble.check_fit_generalises", lambda *args: None)
        report = build_ensemble(EnsembleJob(models=(region_models.whole, region_models.carpal),
                                            data=SiteDataConfig(region_models.site), out=out, device="cpu"))
    return out, report


def test_the_ensemble_records_one_view_per_member_preprocessing(region_models, ensemble) -> None:
    out, _ = ensemble
    loaded = load_checkpoint(out)
    carpal = preprocess_config_of(load_checkpoint(region_models.carpal).metadata)
    assert views_of(loaded.metadata) == (None, carpal)
    assert loaded.model.config.member_views == (0, 1) and loaded.model.config.n_views == 2
    with pytest.raises(ValueError, match="reads 2 view"):  # one channel is not what the ensemble reads
        loaded.model(torch.zeros(1, 1, 32, 32), torch.ones(1))


def test_evaluate_feeds_each_member_its_own_crop(region_models, ensemble) -> None:
    out, report = ensemble
    site = SiteDataConfig(region_models.site)
    metrics = evaluate_checkpoint(out, site, "val", "cpu")
    assert metrics["mad_months"] == pytest.approx(report["val"]["ensemble"], abs=1e-3)
    # by hand: the whole-hand member on the files as they are, the carpal member on its crops, on the images both read,
    # each averaged over the views of the test-time augmentation its `server pretrain` recorded (the default)
    saved = load_checkpoint(out)
    crop, tta = views_of(saved.metadata)[1], tta_config_of(saved.metadata)
    assert tta == PRETRAIN_TTA
    members = [load_checkpoint(region_models.whole).model.eval(), load_checkpoint(region_models.carpal).model.eval()]
    carpal = load_site(site, 32, None, seed=0, splits=("val",), preprocess=crop)
    errors = []
    for record in carpal.val.records:
        pixels = read_image(record.path)
        inputs = [model_input(pixels, 32)[1], model_input(Preprocessor(crop)(pixels).image, 32)[1]]
        male = torch.tensor([float(record.male)])
        with torch.inference_mode():
            ages = [float(forward_tta(m, x[None], male, tta).expected_months) for m, x in zip(members, inputs)]
        predicted = float(np.dot(saved.model.weights[0].numpy(), ages) + float(saved.model.intercepts[0]))
        errors.append(abs(predicted - record.age_months))
    assert metrics["n"] == len(carpal.val) and metrics["mad_months"] == pytest.approx(np.mean(errors), abs=1e-3)


def fit_metadata(path: Path) -> dict:
    return load_checkpoint(path).metadata


def test_predict_feeds_each_member_its_own_crop(region_models, ensemble) -> None:
    out, _ = ensemble
    site = load_site(SiteDataConfig(region_models.site), 32, None, seed=0, splits=("val",))
    path = site.val.records[0].path
    predictor = Predictor(PredictSettings(out, PatientFacts(male=True), progress=False))
    pending = predictor._prepare(WorkItem(path))
    carpal = Preprocessor(views_of(fit_metadata(out))[1])(read_image(path))
    assert carpal.refused is None and pending.tensor.shape == (2, 32, 32)
    torch.testing.assert_close(pending.tensor[0:1], model_input(read_image(path), 32)[1])
    torch.testing.assert_close(pending.tensor[1:2], model_input(carpal.image, 32)[1])
    row = next(predictor.run([WorkItem(path, PatientFacts(male=True))]))
    assert row["status"] == "ok" and np.isfinite(row["bone_age_months"])


def test_paths_that_read_one_preprocessing_refuse_a_region_ensemble(region_models, ensemble, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    out, _ = ensemble
    with pytest.raises(ConfigError, match="differently preprocessed views"):
        preprocess_config_of(fit_metadata(out))  # what a site, training and calibration read
    code = client_main(["finetune", "--pretrained", str(out), "--data", str(region_models.site), "--out",
                        str(tmp_path / "x.pt"), "--epochs", "1"])
    assert code == 2 and "differently preprocessed views" in capsys.readouterr().err
