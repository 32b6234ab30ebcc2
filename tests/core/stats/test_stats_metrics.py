"""Metrics against values computed by hand."""

import numpy as np
import pytest

from core.stats.metrics import Predictions, compute_metrics


def test_mad_rmse_bias_and_accuracy_by_hand():
    p = Predictions(np.array([10.0, 30.0, 100.0, 200.0]), np.array([12.0, 24.0, 100.0, 180.0]), np.zeros(4))
    m = compute_metrics(p, class_step_months=3.0)
    assert m["n"] == 4
    assert m["mad_months"] == pytest.approx((2 + 6 + 0 + 20) / 4)
    assert m["rmse_months"] == pytest.approx(np.sqrt((4 + 36 + 0 + 400) / 4))
    assert m["bias_months"] == pytest.approx((-2 + 6 + 0 + 20) / 4)
    # classes of 3 months: 10->3 vs 12->4, 30->10 vs 24->8, 100->33 vs 33, 200->67 vs 60
    assert m["accuracy"] == pytest.approx(0.25)
    assert m["accuracy_1y"] == pytest.approx(0.75)
    assert m["mad_by_age_group"] == {"0-2y": 2.0, "2-5y": 6.0, "8-11y": 0.0, "14-17y": 20.0}


def test_whole_year_sites_count_accuracy_in_years():
    p = Predictions(np.array([125.0, 130.0]), np.array([120.0, 144.0]), np.zeros(2))
    assert compute_metrics(p, label_unit="years")["accuracy"] == pytest.approx(0.5)


def test_oldest_group_includes_ages_above_its_upper_bound():
    p = Predictions(np.array([230.0]), np.array([235.0]), np.zeros(1))
    assert compute_metrics(p)["mad_by_age_group"] == {"17-20y": 5.0}


def test_empty_evaluation_is_nan_not_an_error():
    empty = np.zeros(0)
    m = compute_metrics(Predictions(empty, empty, empty))
    assert m["n"] == 0 and np.isnan(m["mad_months"])


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError):
        Predictions(np.zeros(2), np.zeros(3), np.zeros(2))
