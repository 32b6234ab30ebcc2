"""Real sites, experiment files and the baselines' building blocks of `python -m sim`, without the engine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from core.data import SiteDataConfig, load_site, make_loader
from core.model.config import TJNetConfig
from core.model.tjnet import TJNet
from core.training import predict
from sim.__main__ import main
from sim.baselines import calibrated, seeded
from sim.config import RealSite, SimConfig, load_experiment, preset
from sim.sites import PreparedSite, real_sites


def test_site_arguments_and_experiment_files(tmp_path: Path) -> None:
    assert RealSite.parse("a/b:years") == RealSite(Path("a/b"), "years")
    assert RealSite.parse("c:\\data") == RealSite(Path("c:\\data"), "months")
    (tmp_path / "exp.toml").write_text(
        'pretrained = "model.pt"\nseeds = 3\nfreeze = ["1-3", "none"]\nrounds = 2\n'
        '[[sites]]\npath = "hospital_a"\nlabel_unit = "years"\n[[sites]]\npath = "hospital_b"\nname = "b"\n')
    overrides = load_experiment(tmp_path / "exp.toml")
    config = preset(overrides.pop("preset"), **overrides)
    assert config.pretrained == tmp_path / "model.pt" and config.seeds == 3 and config.rounds == 2
    assert config.freeze_specs == ("1-3", "none") and config.seed_list() == [0, 1, 2]
    assert config.real_sites == (RealSite(tmp_path / "hospital_a", "years"), RealSite(tmp_path / "hospital_b", name="b"))
    several = seeded(config, 2)
    assert several.seed == 2 and several.out_dir == config.out_dir / "seed-2"
    (tmp_path / "bad.toml").write_text('sources = "x"\n')
    with pytest.raises(ValueError, match="unknown keys"):
        load_experiment(tmp_path / "bad.toml")


def test_real_sites_are_checked_before_anything_trains(tmp_path: Path) -> None:
    site = tmp_path / "h"
    site.mkdir()
    (site / "labels.csv").write_text("id,boneage,male\n")
    (site / "site.json").write_text(json.dumps({"label_unit": "years"}))
    with pytest.raises(Exception, match="pass .*:years"):
        real_sites(SimConfig(real_sites=(RealSite(site, "months"),)))
    assert real_sites(SimConfig(real_sites=(RealSite(site, "years"),)))[0].label_unit == "years"
    with pytest.raises(Exception, match="no labels.csv"):
        real_sites(SimConfig(real_sites=(RealSite(tmp_path / "missing"),)))
    with pytest.raises(Exception, match="not supported yet"):
        real_sites(SimConfig(real_sites=(RealSite(site, "years", age_column="age"),)))


@pytest.mark.parametrize("argv,message", [
    (["--site", "nowhere"], "no labels.csv"),
    (["--pretrained", "none.pt", "--site", "SITE"], "checkpoint not found"),
    (["--pretrained", "a.pt", "--source", "b"], "not both"),
    (["--seeds", "0"], "at least 1"),
    (["--experiment", "missing.toml"], "cannot read experiment file"),
])
def test_bad_real_data_options_are_one_line_errors(argv, message, tmp_path: Path, capsys) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "labels.csv").write_text("id,boneage,male\n")
    argv = [str(site) if a == "SITE" else a for a in argv]
    assert main([*argv, "--out", str(tmp_path / "o"), "--cache", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err


def test_calibration_baseline_fits_on_train_and_applies_to_test(tmp_path: Path) -> None:
    from sim.phantom.writer import generate_site

    folder = generate_site("eu_clinic", 30, tmp_path / "s", seed=1, image_size=32)
    torch.manual_seed(0)
    model = TJNet(TJNetConfig(image_size=32, width=0.25))
    data = load_site(SiteDataConfig(root=folder), 32, None, seed=0)
    row = calibrated(model, PreparedSite("s", folder, "months"), data.train, data.test, 3.0)
    assert row.strategy == "calibrated" and row.metrics["n"] == len(data.test)
    raw = predict(model, make_loader(data.test, 64, shuffle=False, seed=0), torch.device("cpu"))
    expected = np.clip(row.extra["intercept"] + row.extra["slope"] * raw.predicted_months, 0, None)
    np.testing.assert_allclose(row.predictions.predicted_months, expected, rtol=1e-5)
    fitted = predict(model, make_loader(data.train, 64, shuffle=False, seed=0), torch.device("cpu"))
    slope, intercept = np.polyfit(fitted.predicted_months, fitted.true_months, 1)
    assert (row.extra["slope"], row.extra["intercept"]) == pytest.approx((slope, intercept), rel=1e-4)


def test_simulated_sites_share_the_gpus_the_cores_let_train_at_once() -> None:
    from sim.federation import site_resources

    assert site_resources(4, cpu_count=2, gpu_count=0) == {"num_cpus": 1.0, "num_gpus": 0.0}
    assert site_resources(4, cpu_count=16, gpu_count=1) == {"num_cpus": 1.0, "num_gpus": 0.25}  # all four on one GPU
    assert site_resources(4, cpu_count=2, gpu_count=1) == {"num_cpus": 1.0, "num_gpus": 0.5}  # two at a time
    assert site_resources(2, cpu_count=16, gpu_count=4) == {"num_cpus": 1.0, "num_gpus": 1.0}  # never more than one
    assert site_resources(4, cpu_count=16, gpu_count=1, cpus_per_site=8)["num_gpus"] == 0.5


def test_every_stage_uses_the_configured_device(tmp_path: Path) -> None:
    from sim.experiment import device_of, federation_runs

    config = SimConfig(device="cpu", out_dir=tmp_path, strategy="fedavgm",
                       strategy_options=(("server-momentum", 0.5),), freeze_specs=("1-3",))
    sites = [PreparedSite("a", tmp_path / "a", "months"), PreparedSite("b", tmp_path / "b", "years")]
    (run,) = federation_runs(config, sites, tmp_path / "pre.pt")
    assert device_of(config) == torch.device("cpu") and run.config.device == "cpu"
    assert [node["device"] for node in run.sites] == ["cpu", "cpu"]
    assert [node["label-unit"] for node in run.sites] == ["months", "years"]
    assert run.config.aggregator_options() == {"server_momentum": 0.5}
    assert device_of(SimConfig()) == torch.device("cuda" if torch.cuda.is_available() else "cpu")
