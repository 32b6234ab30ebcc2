"""The federated model under each site's own sex-specific calibration (`<strategy>+calib`), at home and away."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.calibration import fit_sex_calibration
from core.data import load_site, make_loader
from core.model.config import TJNetConfig
from core.model.tjnet import TJNet
from core.training import predict
from sim.baselines import federated_calibrated
from sim.config import SimConfig
from sim.experiment import load_test_splits
from sim.sites import PreparedSite

CPU = torch.device("cpu")


def test_each_site_fits_its_own_line_per_sex_on_its_training_split_and_carries_it_to_other_sites(
        tmp_path: Path) -> None:
    from sim.phantom.writer import generate_site

    sites = [PreparedSite(name, generate_site(preset, 40, tmp_path / name, seed=k, image_size=32), "months")
             for k, (name, preset) in enumerate((("a", "rsna"), ("b", "eu_clinic")))]
    torch.manual_seed(0)
    model = TJNet(TJNetConfig(image_size=32, width=0.25))
    tests = load_test_splits(sites, 32)
    config = SimConfig(image_size=32, device="cpu", out_dir=tmp_path / "o")
    cross: list = []
    rows = federated_calibrated(config, sites, model, None, "1-3", tests, cross)
    assert [(r.site, r.strategy, r.extra["model_site"]) for r in rows] == [("a", "fedavg+calib", "a"),
                                                                           ("b", "fedavg+calib", "b")]
    assert sorted((r.extra["model_site"], r.site) for r in cross) == [("a", "a"), ("a", "b"), ("b", "a"), ("b", "b")]
    for owner in sites:
        train = load_site(owner.data, 32, None, seed=0, splits=("train",)).train
        fitted = predict(model, make_loader(train, 64, shuffle=False, seed=0), CPU)
        line = fit_sex_calibration(fitted.predicted_months, fitted.true_months, fitted.male)
        assert line.boys != line.girls
        for target in sites:
            raw = predict(model, make_loader(tests[target.name], 64, shuffle=False, seed=0), CPU)
            row = next(r for r in cross if (r.extra["model_site"], r.site) == (owner.name, target.name))
            np.testing.assert_allclose(row.predictions.predicted_months, line.apply(raw.predicted_months, raw.male),
                                       rtol=1e-5)
            assert row.metrics["mad_months"] == pytest.approx(np.mean(np.abs(row.predictions.predicted_months
                                                                              - raw.true_months)), rel=1e-5)
