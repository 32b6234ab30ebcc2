"""Site sizes, crossovers, cross-site scores and the verdict per site, on made-up errors and a small phantom site."""

from __future__ import annotations

import csv
import zlib
from pathlib import Path

import numpy as np
import pytest

from core.data import load_site
from core.stats.metrics import Predictions, compute_metrics
from sim.__main__ import main
from sim.config import SimConfig, load_experiment, preset
from sim.cross_site import cross_site_lines, plot_cross_site, write_cross_site
from sim.experiment import Evaluation
from sim.report import write_results
from sim.site_verdict import site_verdict
from sim.sites import PreparedSite
from sim.sizes import sized_sites, subsample_site
from sim.sweep import by_size, crossover, crossover_lines, plot_sizes, size_keys

TRUE = np.linspace(10.0, 220.0, 40)


def _row(site: str, strategy: str, freeze: str, error: float, size: int | None = None, seed: int = 0,
         spread: float = 0.5, **extra) -> Evaluation:
    """Absolute errors of `error` months give or take `spread`, in a pattern of its own per method and seed
    (alternating signs of the error: MAD about `error`)."""
    wobble = spread * np.sin(np.arange(TRUE.size) * (1.3 + seed) + zlib.crc32(strategy.encode()) % 7)
    predicted = TRUE + np.where(np.arange(TRUE.size) % 2 == 0, 1.0, -1.0) * (error + wobble)
    p = Predictions(predicted, TRUE, np.arange(TRUE.size) % 2 == 0)
    return Evaluation(site, strategy, freeze, compute_metrics(p), p, {"seed": seed, "site_size": size, **extra})


def _options(site: str, errors: dict[str, float], size: int | None = None) -> list[Evaluation]:
    keys = {"pretrained": ("pretrained", "all"), "calibrated": ("calibrated", "all"), "alone": ("site-alone", "1-3"), "fed": ("fedavg", "1-3"),
            "local": ("fedavg+local", "1-3"), "calib": ("fedavg+calib", "1-3"), "fedrep": ("fedavg+fedrep", "1-3")}
    return [_row(site, *keys[name], error, size) for name, error in errors.items()]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> PreparedSite:
    from sim.phantom.writer import generate_site

    folder = generate_site("eu_clinic", 60, tmp_path_factory.mktemp("s") / "eu", seed=3, image_size=32)
    return PreparedSite("eu", folder, "months")


def test_a_site_cut_to_n_training_images_keeps_its_test_and_validation_images(site, tmp_path: Path) -> None:
    full = load_site(site.data, 32, None, seed=0)
    ids = {name: [r.image_id for r in getattr(full, name).records] for name in ("train", "val", "test")}
    cut = {}
    for size in (5, 10, 20):
        sized, kept = subsample_site(site, size, 0, 0, tmp_path / f"n{size}")
        data = load_site(sized.data, 32, None, seed=0)
        assert kept == size and len(data.train) == size
        assert [r.image_id for r in data.test.records] == ids["test"] and [r.image_id for r in data.val.records] == ids["val"]
        assert set(r.image_id for r in data.train.records) <= set(ids["train"])
        assert [(r.age_months, r.male) for r in data.test.records] == [(r.age_months, r.male) for r in full.test.records]
        cut[size] = {r.image_id for r in data.train.records}
    assert cut[5] < cut[10] < cut[20]  # nested
    again, _ = subsample_site(site, 10, 0, 0, tmp_path / "again")
    other, _ = subsample_site(site, 10, 1, 0, tmp_path / "seed1")
    assert {r.image_id for r in load_site(again.data, 32, None, seed=0).train.records} == cut[10]  # seeded
    assert {r.image_id for r in load_site(other.data, 32, None, seed=0).train.records} != cut[10]
    (all_of_it,), counts = sized_sites([site], 10_000, 0, tmp_path / "big")
    assert counts == {"eu": len(ids["train"])} and len(load_site(all_of_it.data, 32, None, seed=0).train) == len(ids["train"])


def test_site_sizes_come_from_the_experiment_file_or_the_command_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "exp.toml").write_text("site_sizes = [100, 25, 50]\nfedrep = true\n")
    overrides = load_experiment(tmp_path / "exp.toml")
    config = preset(overrides.pop("preset"), **overrides)
    assert config.site_sizes == (25, 50, 100) and config.fedrep
    with pytest.raises(ValueError, match="at least 2"):
        SimConfig(site_sizes=(0, 10))
    assert main(["--site-sizes", "25,x", "--out", str(tmp_path / "o"), "--cache", str(tmp_path / "c")]) == 2
    assert "--site-sizes = '25,x' is not a valid value (expected a whole number)" in capsys.readouterr().err


def test_results_carry_the_site_size_and_the_crossover_is_named_with_its_intervals(tmp_path: Path) -> None:
    rows = []
    for size, fed, alone in ((25, 10.0, 20.0), (50, 12.0, 15.0), (100, 14.0, 14.05), (200, 14.0, 10.0)):
        rows += [_row("a", "fedavg", "1-3", fed, size, n_train=size), _row("a", "site-alone", "1-3", alone, size, n_train=size)]
    write_results(rows, tmp_path / "results.csv")
    with open(tmp_path / "results.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [(r["site_size"], r["site"], r["strategy"]) for r in table][:3] == [
        ("25", "a", "fedavg"), ("25", "a", "site-alone"), ("25", "all sites", "fedavg")]
    assert float(next(r for r in table if r["site_size"] == "200" and r["site"] == "a" and r["strategy"] == "fedavg")
                 ["mad_months"]) == pytest.approx(14.0, abs=0.2)
    assert table[0]["n_train"] == "25"
    comparisons = by_size(rows)
    words = crossover(comparisons, "a", ("fedavg", "1-3"), ("site-alone", "1-3"))
    assert words.startswith("fedavg (freeze 1-3) beats the site alone up to 50 images and no longer from 100 on")
    assert "25: -9.99 [-10.18, -9.81]" in words and "200: +4.01 [" in words
    always = by_size([r for r in rows if r.extra["site_size"] <= 50])
    assert "at every size tried, up to 50 images: no crossover" in crossover(always, "a", ("fedavg", "1-3"),
                                                                            ("site-alone", "1-3"))
    never = by_size([r for r in rows if r.extra["site_size"] >= 100])
    assert "level with it up to 100 images and worse from 200 on (200: +4.0" in crossover(
        never, "a", ("fedavg", "1-3"), ("site-alone", "1-3"))
    plot_sizes(comparisons, size_keys("fedavg", "1-3"), tmp_path / "sizes.png")
    assert (tmp_path / "sizes.png").stat().st_size > 1000


@pytest.mark.parametrize("pattern,expected", [
    # (federated, alone) per size 25..400; a win is a significant negative difference only
    ([(10, 20), (12, 15), (14, 14.05), (14, 10), (14, 10)], "up to 50 images and no longer from 100 on (difference"),
    ([(10, 20), (14, 10), (10, 20), (14, 10), (14, 10)], "up to 25 images and no longer from 50 on (not monotone"),
    ([(20, 10), (20, 10), (10, 20), (10, 20), (14, 14.05)], "not beat the site alone at the smallest size (25) yet "
                                                            "does at 100, 200: no clean crossover"),
])
def test_the_crossover_is_the_first_size_the_federation_stops_winning_at(pattern, expected) -> None:
    rows = []
    for size, (fed, alone) in zip((25, 50, 100, 200, 400), pattern):
        rows += [_row("a", "fedavg", "1-3", fed, size), _row("a", "site-alone", "1-3", alone, size)]
    assert expected in crossover(by_size(rows), "a", ("fedavg", "1-3"), ("site-alone", "1-3"))


@pytest.mark.parametrize("pattern,expected,reverse", [
    # (federated, alone) per size 25..400, never a win: where the federation stops being level with the site alone
    ([(14, 14)] * 5, "at no size tried and is level with it at every one: no crossover found (difference in", False),
    ([(20, 10)] * 5, "at no size tried and is worse at every one: no crossover found", False),
    ([(14, 14), (14, 14), (16, 14), (18, 14), (20, 14)], "level with it up to 50 images and worse from 100 on "
                                                         "(100: +2.0", True),
    ([(14, 14), (18, 14), (14, 14), (18, 14), (18, 14)], "worse from 50 on (50: +4.0", True),
    ([(18, 14), (14, 14), (14, 14), (18, 14), (18, 14)], "worse at 25, 200, 400, level at 50, 100: no clean crossover",
     False),
])
def test_a_federation_level_at_small_sizes_and_worse_above_names_the_size_it_turns_worse(pattern, expected,
                                                                                         reverse) -> None:
    rows = []
    for size, (fed, alone) in zip((25, 50, 100, 200, 400), pattern):
        rows += [_row("a", "fedavg", "1-3", fed, size), _row("a", "site-alone", "1-3", alone, size)]
    words = crossover(by_size(rows), "a", ("fedavg", "1-3"), ("site-alone", "1-3"))
    assert expected in words
    assert ("reverse crossover at" in words) == reverse, words


def test_the_size_sweep_lines_cover_all_sites_each_federated_freeze_spec_and_federated_then_local() -> None:
    rows = []
    for size, fed_none in zip((25, 50, 100, 200, 400), (14, 14, 18, 18, 18)):
        rows += [_row(site, strategy, freeze, error, size) for site in ("a", "b") for strategy, freeze, error in (
            ("site-alone", "none", 14), ("fedavg", "none", fed_none), ("site-alone", "1-3", 14),
            ("fedavg", "1-3", 14), ("fedavg+local", "1-3", 14))]
    lines = [line for line in crossover_lines(by_size(rows), "fedavg", "1-3", ("none", "1-3"))
             if line.startswith("- ")]
    assert [line.split(" beats")[0] for line in lines] == [
        f"- {site}: {method}" for site in ("all sites", "a", "b")
        for method in ("fedavg (freeze 1-3)", "fedavg (freeze none)", "fedavg+local (freeze 1-3)")]
    assert ["reverse crossover at 100 images" in line for line in lines] == [False, True, False] * 3
    without_local = crossover_lines(by_size([r for r in rows if r.strategy != "fedavg+local"]), "fedavg", "1-3")
    assert sum(line.startswith("- ") for line in without_local) == 3  # a method the run did not train is left out


def test_a_reverse_crossover_that_is_not_monotone_says_where_it_is_level_again() -> None:
    rows = []
    for size, fed in zip((25, 50, 100, 200, 400), (14, 18, 14, 18, 18)):
        rows += [_row("a", "fedavg", "1-3", fed, size), _row("a", "site-alone", "1-3", 14, size)]
    assert "(not monotone: level again at 100): reverse crossover at 50 images" in crossover(
        by_size(rows), "a", ("fedavg", "1-3"), ("site-alone", "1-3"))


@pytest.mark.parametrize("errors,expected", [
    ({"calibrated": 20, "alone": 15, "fed": 12, "local": 8, "calib": 11}, "**federate then fine-tune**"),
    ({"calibrated": 20, "alone": 15, "fed": 15.05, "local": 14.9, "calib": 15.1}, "**stay alone**: no federated"),
    ({"calibrated": 10, "alone": 10.05, "fed": 12, "local": 10.1, "calib": 9.95}, "**calibrate only**: no federated"),
    ({"calibrated": 20, "alone": 15, "fed": 10.05, "local": 10.0, "calib": 12}, "**federate** (fedavg (freeze 1-3)"),
    ({"calibrated": 20, "alone": 15, "fed": 12, "local": 11, "fedrep": 6}, "**personalise** (fedavg+fedrep"),
    ({"pretrained": 8, "calibrated": 12, "alone": 12.05, "fed": 11.9}, "**use the pretrained model as it is**"),
    # calibration makes the model worse and the site alone is better than calibration but no better than no training
    ({"pretrained": 8, "calibrated": 12, "alone": 8.05, "fed": 11.9}, "**use the pretrained model as it is**: no "
                                                                      "federated option beats it significantly (best: "
                                                                      "fedavg (freeze 1-3) minus pretrained"),
    ({"pretrained": 10, "calibrated": 12, "alone": 8, "fed": 11.9}, "**stay alone**: no federated option beats it "
                                                                    "significantly (best: fedavg (freeze 1-3) minus "
                                                                    "site-alone (freeze 1-3)"),
])
def test_the_verdict_names_only_what_the_paired_differences_support(errors, expected) -> None:
    comparison = by_size(_options("a", errors))[None]
    line = site_verdict(comparison, "a", "fedavg", "1-3")
    assert line.startswith(f"a: {expected}"), line
    assert "95 % CI" in line
    if "**federate**" in expected:  # fed+local has the lowest MAD, but not significantly below plain federation
        assert "the lowest MAD, fedavg+local (freeze 1-3), is not significantly better" in line


def test_cross_site_scores_each_sites_model_on_every_test_split(tmp_path: Path) -> None:
    error = {("a", "a"): 5.0, ("a", "b"): 9.0, ("b", "a"): 11.0, ("b", "b"): 6.0}  # (model of, test split of)
    rows = [_row(target, "site-alone", "1-3", error[owner, target], model_site=owner, seed=seed)
            for owner in ("a", "b") for target in ("a", "b") for seed in (0, 1)]
    rows += [_row(target, "fedavg", "1-3", 7.0, model_site="federated") for target in ("a", "b")]
    write_cross_site(rows, tmp_path / "cross_site.csv")
    with open(tmp_path / "cross_site.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 6
    home = next(r for r in table if (r["model_site"], r["test_site"], r["method"]) == ("a", "a", "site-alone"))
    away = next(r for r in table if (r["model_site"], r["test_site"], r["method"]) == ("a", "b", "site-alone"))
    assert float(home["mad_months"]) == pytest.approx(5.0, abs=0.2) and home["seeds"] == "2"
    assert float(away["mad_months"]) == pytest.approx(9.0, abs=0.2)
    assert float(away["mad_ci_low"]) <= float(away["mad_months"]) <= float(away["mad_ci_high"])
    lines = "\n".join(cross_site_lines(rows))
    assert "| all | site-alone (1-3) | a | 5.0" in lines and "| all | site-alone (1-3) | b | 6.0" in lines
    assert "| 11.0" in lines and "| 9.0" in lines
    plot_cross_site(rows, tmp_path / "cross.png")
    assert (tmp_path / "cross.png").stat().st_size > 1000


def test_sim_sites_imports_first_without_a_cycle_through_the_site_sizes() -> None:
    import importlib
    import sys

    before = {name: module for name, module in sys.modules.items() if name == "sim" or name.startswith("sim.")}
    for name in before:
        del sys.modules[name]
    try:
        importlib.import_module("sim.sites")  # first, as a user's script might
        importlib.import_module("sim.sizes")
    finally:  # the other tests keep the modules they imported, and no fresh copy stays behind
        for name in [m for m in sys.modules if m == "sim" or m.startswith("sim.")]:
            del sys.modules[name]
        sys.modules.update(before)


def test_a_site_kept_whole_reports_its_training_images(site) -> None:
    from sim.sizes import training_count

    assert training_count(site) == len(load_site(site.data, 32, None, seed=0).train) > 0


def test_the_report_names_the_reverse_crossover_of_every_federated_freeze_spec(tmp_path: Path) -> None:
    from sim.report import write_report

    rows = []
    for size, fed_none in zip((25, 50), (14, 18)):
        rows += [_row(site, strategy, freeze, error, size, n_train=size) for site in ("a",)
                 for strategy, freeze, error in (
                     ("pretrained", "all", 16), ("calibrated", "all", 15), ("site-alone", "none", 14),
                     ("fedavg", "none", fed_none), ("site-alone", "1-3", 14), ("fedavg", "1-3", 14),
                     ("fedavg+local", "1-3", 14), ("pooled", "1-3", 14))]
    config = preset("smoke", out_dir=tmp_path, freeze_specs=("1-3", "none"), site_sizes=(25, 50))
    write_report(config, rows, {"fedavg_freeze-1-3": {"a": [15.0, 14.0]}}, [], 1.0)
    report = (tmp_path / "report.md").read_text()
    sweep = report.split("## Site size: when federating stops paying", 1)[1].split("![", 1)[0]
    assert "- a: fedavg (freeze none) beats the site alone at no size tried; level with it up to 25 images and worse " \
           "from 50 on (50: +4.0" in sweep
    assert "- a: fedavg (freeze 1-3) beats the site alone at no size tried and is level with it at every one" in sweep
