"""`python -m sim` settings, report writing and bad input, without running the engine."""

import csv

import numpy as np
import pytest

from core.metrics import Predictions, compute_metrics
from sim.__main__ import main
from sim.config import PRESETS, preset
from sim.experiment import Evaluation
from sim.report import plot_age_groups, plot_rounds, write_results
from sim.run import summarise


def _evaluation(site: str, strategy: str, freeze: str, offset: float) -> Evaluation:
    true = np.array([30.0, 90.0, 150.0, 210.0])
    p = Predictions(true + offset, true, np.array([0.0, 1.0, 0.0, 1.0]))
    return Evaluation(site, strategy, freeze, compute_metrics(p), p)


ROWS = [_evaluation("0-tongji", "pretrained", "all", 12.0), _evaluation("0-tongji", "fedavg_freeze-1-3", "1-3", 3.0),
        _evaluation("0-tongji", "fedavg_freeze-none", "none", 6.0), _evaluation("1-eu", "pretrained", "all", 9.0),
        _evaluation("1-eu", "fedavg_freeze-1-3", "1-3", 5.0), _evaluation("1-eu", "fedavg_freeze-none", "none", 4.0)]


def test_results_csv_has_one_row_per_site_and_strategy(tmp_path):
    write_results(ROWS, tmp_path / "results.csv")
    with open(tmp_path / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6
    assert {"site", "strategy", "mad_months", "rmse_months", "accuracy"} <= set(rows[0])
    assert float(rows[1]["mad_months"]) == pytest.approx(3.0)


def test_summary_counts_the_winning_freeze_spec_per_site():
    text = summarise(ROWS)
    assert "| pretrained | 10.50 |" in text
    assert "freeze 1-3: 1 site(s)" in text and "freeze none: 1 site(s)" in text


def test_plots_are_written(tmp_path):
    plot_rounds({"fedavg_freeze-1-3": {"a": [9.0, 7.0], "b": [8.0, 6.0]}}, {"pretrained": 10.0}, tmp_path / "r.png")
    plot_age_groups(ROWS, ["pretrained", "fedavg_freeze-1-3"], tmp_path / "a.png")
    assert (tmp_path / "r.png").stat().st_size > 1000 and (tmp_path / "a.png").stat().st_size > 1000


def test_presets_exist_and_overrides_apply():
    assert {"default", "smoke", "paper"} <= set(PRESETS)
    assert preset("smoke", rounds=5, seed=None).rounds == 5
    assert PRESETS["default"].freeze_specs == ("1", "1-2", "1-3", "1-4", "none")


@pytest.mark.parametrize("argv,message", [
    (["--freeze", "1-9"], "freeze spec"), (["--strategy", "fedfoo"], "unknown strategy"),
    (["--dp", "-1"], "noise multipliers"),
])
def test_bad_options_are_one_line_errors(argv, message, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path / "o"), "--cache", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err
    assert not (tmp_path / "c").exists()
