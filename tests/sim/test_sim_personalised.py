"""The federated model under each site's own sex-specific calibration (`<strategy>+calib`), at home and away."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from core.predict.calibration import fit_sex_calibration
from core.data import load_site, make_loader
from core.model.config import TJNetConfig
from core.model.tjnet import TJNet
from core.train.training import predict
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


def test_leave_one_site_out_federates_the_others_and_scores_the_one_left_out(tmp_path: Path) -> None:
    from core.checkpoint import describe, save_checkpoint
    from server.outcome import FederationOutcome
    from sim.config import SiteSpec
    from sim.cross_site import held_out_lines
    from sim.experiment import evaluate_everywhere, leave_one_out_runs
    from sim.run import Plan, score_held_out
    from sim.sweep import by_size

    sites = [PreparedSite(n, tmp_path / n, "months") for n in ("a", "b", "c")]
    config = SimConfig(out_dir=tmp_path / "o", freeze_specs=("1-3",), device="cpu", leave_one_out=True,
                       sites=(SiteSpec("rsna", 30),))
    runs = leave_one_out_runs(config, sites, tmp_path / "pre.pt")
    assert [r.config.out_dir.name for r in runs] == [f"fedavg_freeze-1-3_without-{n}" for n in ("a", "b", "c")]
    assert [[node["data-path"] for node in r.sites] for r in runs] == [
        [str(tmp_path / m) for m in ("a", "b", "c") if m != n] for n in ("a", "b", "c")]
    assert all(r.config.min_nodes == 2 for r in runs)
    # scoring a finished run: its model on the left-out site's test split, plain and under that site's calibration
    from sim.phantom.writer import generate_site

    held = PreparedSite("c", generate_site("eu_clinic", 40, tmp_path / "real_c", seed=5, image_size=32), "months")
    torch.manual_seed(1)
    model = TJNet(TJNetConfig(image_size=32, width=0.25))
    final = save_checkpoint(tmp_path / "final.pt", model, describe(model))
    done = FederationOutcome(final, 2, [], 0, {})
    tests = load_test_splits([held], 32)
    plan = Plan(None, {0: ([held], {})}, [], [], [], [])
    rows = score_held_out(replace(config, image_size=32), plan, held, runs[2], done, tests)
    assert [(r.site, r.strategy) for r in rows] == [("c", "fedavg-without-site"), ("c", "fedavg-without-site+calib")]
    plain = evaluate_everywhere(model, [held], tests, "x", "1-3", CPU)[0]
    assert rows[0].metrics["mad_months"] == pytest.approx(plain.metrics["mad_months"], rel=1e-5)
    base = evaluate_everywhere(model, [held], tests, "pretrained", "all", CPU)[0]
    text = "\n".join(held_out_lines(by_size([*rows, base]), "fedavg", "1-3"))
    assert "c: fedavg-without-site (freeze 1-3) minus pretrained +0.00 months" in text
    assert held_out_lines(by_size([base]), "fedavg", "1-3") == []
    with pytest.raises(Exception, match="no report written"):
        score_held_out(config, plan, held, runs[2], FederationOutcome(None, 0, [], 0, {}, failure="boom"), tests)
