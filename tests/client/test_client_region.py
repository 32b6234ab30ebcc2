"""A region checkpoint at a site: `predict` cuts the crop training cut, refuses a failed registration by name, and
`finetune` keeps the region."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from client.__main__ import main
from client.predict import PredictSettings, Predictor
from client.worklist import PatientFacts, WorkItem
from core.checkpoint import load_checkpoint
from core.data import SiteDataConfig, load_site
from core.preprocess import preprocess_config_of
from sim.phantom.synth import synthesize
from tests.core.data.data_sites import write_image
from tests.core.preprocess.conftest import canonical_profile
from tests.core.preprocess.test_preprocess_region import turned


def test_the_crop_predict_feeds_the_model_is_the_crop_training_decoded(region_models) -> None:
    settings = preprocess_config_of(load_checkpoint(region_models.carpal).metadata)
    site = load_site(SiteDataConfig(region_models.site), 32, None, seed=0, preprocess=settings)
    predictor = Predictor(PredictSettings(region_models.carpal, PatientFacts(male=True), progress=False))
    records = site.val.records + site.test.records
    for record, trained in zip(records, np.concatenate([site.val.images, site.test.images])):
        pending = predictor._prepare(WorkItem(record.path))
        assert pending.tensor is not None and pending.tensor.shape == (1, 32, 32)
        np.testing.assert_array_equal(pending.square, trained)
    plain = Predictor(PredictSettings(region_models.whole, PatientFacts(male=True), progress=False))
    assert not np.array_equal(plain._prepare(WorkItem(records[0].path)).square, site.val.images[0])


def test_predict_refuses_a_hand_whose_registration_fails(region_models, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    upright = synthesize(canonical_profile(), seed=3, index=0).image  # a canonical phantom hand
    lying = turned(upright, 60.0)  # at 90 degrees the mask key points lean 27-36 degrees, at the 35 degree bound
    folder = tmp_path / "inbox"
    folder.mkdir()
    write_image(folder / "upright.png", upright, "png8")
    write_image(folder / "lying.png", lying, "png8")
    code = main(["predict", "--model", str(region_models.carpal), "--sex", "F", "--json", "--no-progress",
                 str(folder)])
    rows = {Path(r["image"]).name: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert code == 0 and rows["upright.png"]["status"] == "ok"
    assert rows["lying.png"]["status"] == "refused" and rows["lying.png"]["bone_age_months"] is None
    assert rows["lying.png"]["reason"].startswith("refused by the quality gate: registration failed (the carpal")
    assert "registration_failed" in rows["lying.png"]["quality_flags"]


def test_finetune_of_a_region_checkpoint_trains_and_keeps_the_crop(region_models, tmp_path: Path) -> None:
    out = tmp_path / "site.pt"
    assert main(["finetune", "--pretrained", str(region_models.carpal), "--data", str(region_models.site), "--out",
                 str(out), "--epochs", "1"]) == 0
    tuned = load_checkpoint(out)
    assert preprocess_config_of(tuned.metadata) == preprocess_config_of(load_checkpoint(region_models.carpal).metadata)
    assert tuned.metadata["preprocess"]["region"] == "carpal"
