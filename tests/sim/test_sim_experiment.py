"""Real sites, experiment files and the baselines' building blocks of `python -m sim`, without the engine."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from client.config import SiteConfig
from core.data import DataError, SiteDataConfig, load_site, make_loader
from core.model.config import TJNetConfig
from core.model.tjnet import TJNet
from core.train.training import predict
from sim.__main__ import main
from sim.baselines import calibrated, seeded
from sim.config import RealSite, SimConfig, load_experiment, preset
from sim.experiment import federation_runs
from sim.sites import PreparedSite, real_sites


def test_site_arguments_and_experiment_files(tmp_path: Path) -> None:
    assert RealSite.parse("a/b:years") == RealSite(Path("a/b"), "years")
    assert RealSite.parse("c:\\data") == RealSite(Path("c:\\data"), "months")
    (tmp_path / "exp.toml").write_text(
        'pretrained = "model.pt"\nseeds = 3\nfreeze = ["1-3", "none"]\nrounds = 2\n'
        '[[sites]]\npath = "hospital_a"\nlabel_unit = "years"\n[[sites]]\npath = "hospital_b"\nname = "b"\n'
        '[[sites]]\npath = "c"\ncsv = "scan.csv"\nimage_dir = "png"\nid_column = "image"\nage_column = "age_y"\n'
        'sex_column = "sex"\n')
    overrides = load_experiment(tmp_path / "exp.toml")
    config = preset(overrides.pop("preset"), **overrides)
    assert config.pretrained == tmp_path / "model.pt" and config.seeds == 3 and config.rounds == 2
    assert config.freeze_specs == ("1-3", "none") and config.seed_list() == [0, 1, 2]
    assert config.real_sites == (RealSite(tmp_path / "hospital_a", "years"), RealSite(tmp_path / "hospital_b", name="b"),
                                 RealSite(tmp_path / "c", csv_name="scan.csv", image_dir="png", id_column="image",
                                          age_column="age_y", sex_column="sex"))
    several = seeded(config, 2)
    assert several.seed == 2 and several.out_dir == config.out_dir / "seed-2"
    (tmp_path / "bad.toml").write_text('sources = "x"\n')
    with pytest.raises(ValueError, match="unknown keys"):
        load_experiment(tmp_path / "bad.toml")


def _write_site(folder: Path, lines: list[str], csv_name: str = "labels.csv", image_dir: str = "images") -> Path:
    """A real-looking site folder: the manifest `lines` and a small PNG for every id in the first column."""
    (folder / image_dir).mkdir(parents=True)
    (folder / csv_name).write_text("\n".join(lines) + "\n")
    for line in lines[1:]:
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 32), dtype=np.uint8)).save(folder / image_dir / f"{line.split(',')[0]}.png")
    return folder


def test_real_sites_are_checked_before_anything_trains(tmp_path: Path) -> None:
    site = _write_site(tmp_path / "h", ["id,boneage,male", "a,10,1"])
    (site / "site.json").write_text(json.dumps({"label_unit": "years"}))
    with pytest.raises(Exception, match="pass .*:years"):
        real_sites(SimConfig(real_sites=(RealSite(site, "months"),)))
    assert real_sites(SimConfig(real_sites=(RealSite(site, "years"),)))[0].label_unit == "years"
    with pytest.raises(Exception, match="no labels.csv"):
        real_sites(SimConfig(real_sites=(RealSite(tmp_path / "missing"),)))
    empty = _write_site(tmp_path / "e", ["id,boneage,male", "a,10,unknown"])
    with pytest.raises(DataError, match="no usable images"):
        real_sites(SimConfig(real_sites=(RealSite(empty),)))


def test_a_site_declares_its_own_file_columns_and_unit_and_every_stage_reads_them(tmp_path: Path) -> None:
    lines = ["image,age_years,sex", "a,2,M", "b,11.5,F", "c,not-a-number,F", "d,7,F"]
    folder = _write_site(tmp_path / "tongji", lines, csv_name="scan.csv", image_dir="png")
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    declared = RealSite(folder, "years", csv_name="scan.csv", image_dir="png", id_column="image",
                        age_column="age_years", sex_column="sex")
    (site,) = real_sites(SimConfig(real_sites=(declared,)))
    data = load_site(site.data, 32, None, seed=0)
    records = [*data.train.records, *data.val.records, *data.test.records]
    assert sorted((r.image_id, r.age_months, r.male) for r in records) == [
        ("a", 24.0, True), ("b", 138.0, False), ("d", 84.0, False)]  # c skipped (age not a number), counted
    (run, _) = federation_runs(SimConfig(out_dir=tmp_path / "o", freeze_specs=("1-3",)), [site], tmp_path / "p.pt")
    assert SiteConfig.from_node_config(run.sites[0]).data == site.data  # the simulated site reads the same manifest
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before  # nothing written or changed
    wrong = replace(declared, age_column="age")
    with pytest.raises(DataError, match="missing age column 'age'; columns found: image, age_years, sex") as caught:
        real_sites(SimConfig(real_sites=(wrong,)))
    assert "\n" not in str(caught.value)
    with pytest.raises(DataError, match="columns must differ"):
        real_sites(SimConfig(real_sites=(replace(declared, sex_column="image"),)))


@pytest.mark.parametrize("argv,message", [
    (["--site", "nowhere"], "no labels.csv"),
    (["--pretrained", "none.pt", "--site", "SITE"], "checkpoint not found"),
    (["--pretrained", "a.pt", "--source", "b"], "not both"),
    (["--seeds", "0"], "at least 1"),
    (["--experiment", "missing.toml"], "cannot read experiment file"),
])
def test_bad_real_data_options_are_one_line_errors(argv, message, tmp_path: Path, capsys) -> None:
    site = _write_site(tmp_path / "site", ["id,boneage,male", "a,100,1"])
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
    run, fedbn = federation_runs(config, sites, tmp_path / "pre.pt")
    assert device_of(config) == torch.device("cpu") and run.config.device == fedbn.config.device == "cpu"
    assert [node["device"] for node in (*run.sites, *fedbn.sites)] == ["cpu"] * 4
    assert [node["label-unit"] for node in run.sites] == ["months", "years"]
    assert run.config.aggregator_options() == {"server_momentum": 0.5}
    assert device_of(SimConfig()) == torch.device("cuda" if torch.cuda.is_available() else "cpu")


def test_a_freeze_spec_written_with_commas_labels_federated_and_site_alone_rows_alike(tmp_path: Path) -> None:
    (tmp_path / "exp.toml").write_text('freeze = ["1,2,3", "none"]\n')
    overrides = load_experiment(tmp_path / "exp.toml")
    config = preset(overrides.pop("preset"), **overrides, baseline_freeze="3,2,1")
    assert config.freeze_specs == ("1-3", "none") and config.baseline_freeze == "1-3"
    sites = [PreparedSite("a", tmp_path / "a", "months")]
    runs = federation_runs(replace(config, out_dir=tmp_path / "o"), sites, tmp_path / "p.pt")
    # the report looks federated rows up by (strategy, spec of config.freeze_specs), site-alone rows likewise
    assert [run.config.freeze for run in runs[:2]] == list(config.freeze_specs)
    assert runs[2].config.freeze == config.baseline_freeze  # FedBN


def test_freeze_on_the_command_line_refuses_a_list_that_could_be_one_spec(tmp_path: Path, capsys, monkeypatch) -> None:
    import sim.run

    monkeypatch.setattr(sim.run, "run_experiment", lambda config: pytest.fail(f"ran with {config.freeze_specs}"))
    assert main(["--freeze", "1,2,3", "--out", str(tmp_path / "o"), "--cache", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "ambiguous" in err and "1-3" in err and "\n" not in err


def test_a_repeated_freeze_option_lists_bare_blocks_as_separate_specs(tmp_path: Path, monkeypatch) -> None:
    import sim.run

    seen: list[SimConfig] = []
    monkeypatch.setattr(sim.run, "run_experiment", seen.append)
    assert main(["--freeze", "2", "--freeze", "3,1+2+3", "--out", str(tmp_path / "o")]) == 0
    assert seen[0].freeze_specs == ("2", "3", "1-3")


def test_the_dp_options_reach_each_simulated_site_as_the_node_config_it_reads(tmp_path: Path) -> None:
    from core.privacy import DPConfig

    config = replace(preset("smoke"), dp_noise_multipliers=(1.5,), dp_max_epsilon=6.0, dp_max_grad_norm=2.0, seed=4)
    runs = federation_runs(config, [PreparedSite("0-tongji", tmp_path / "tongji", "months")], tmp_path / "p.pt")
    private = [run for run in runs if any(SiteConfig.from_node_config(node).dp.enabled for node in run.sites)]
    assert len(private) == 1
    assert SiteConfig.from_node_config(private[0].sites[0]).dp == DPConfig(
        enabled=True, noise_multiplier=1.5, max_epsilon=6.0, max_grad_norm=2.0, seed=4)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return f'"{value}"' if isinstance(value, str) else str(value)


def test_the_simulation_pretrains_without_test_time_augmentation(tmp_path: Path, monkeypatch) -> None:
    """`server pretrain` records TTA by default; the simulation scores with one pass, so its model records none."""
    import sim.sites

    jobs = []
    monkeypatch.setattr(sim.sites, "pretrain", jobs.append)
    config = SimConfig(cache_dir=tmp_path, pretrain_epochs=1)
    sim.sites.pretrained_model(config, PreparedSite("source", tmp_path / "source", "months"))
    assert len(jobs) == 1 and not jobs[0].tta.enabled


def test_the_simulation_keeps_its_own_pretraining_budget_not_server_pretrains(tmp_path: Path, monkeypatch) -> None:
    """`server pretrain` trains 40 epochs by default (issue 21); the default `python -m sim` run keeps its 30."""
    import sim.sites
    from core.stages.central import PRETRAIN_EPOCHS

    jobs = []
    monkeypatch.setattr(sim.sites, "pretrain", jobs.append)
    config = replace(preset("default"), cache_dir=tmp_path)
    sim.sites.pretrained_model(config, PreparedSite("source", tmp_path / "source", "months"))
    assert len(jobs) == 1 and jobs[0].train.epochs == config.pretrain_epochs == 30 != PRETRAIN_EPOCHS
