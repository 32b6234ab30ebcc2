"""Per-site linear calibration against lines worked out by hand."""

import numpy as np
import pytest

from core.calibration import LinearCalibration, fit_linear_calibration


def test_an_exact_line_is_recovered_and_undone() -> None:
    # labels = 2 * predicted - 10: the fit is intercept -10, slope 2
    predicted = np.array([10.0, 20.0, 40.0, 80.0])
    calibration = fit_linear_calibration(predicted, 2.0 * predicted - 10.0)
    assert calibration.intercept == pytest.approx(-10.0) and calibration.slope == pytest.approx(2.0)
    np.testing.assert_allclose(calibration.apply(np.array([30.0])), [50.0])


def test_least_squares_by_hand() -> None:
    # x = 0, 1, 2; y = 1, 1, 4: slope = cov / var = (1.5) / 1 = 1.5, intercept = 2 - 1.5 * 1 = 0.5
    calibration = fit_linear_calibration(np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 4.0]))
    assert (calibration.intercept, calibration.slope) == pytest.approx((0.5, 1.5))


def test_degenerate_predictions_give_a_shift_and_ages_stay_non_negative() -> None:
    calibration = fit_linear_calibration(np.array([50.0, 50.0]), np.array([56.0, 60.0]))
    assert calibration == LinearCalibration(8.0, 1.0)
    assert LinearCalibration(-100.0, 1.0).apply(np.array([20.0]))[0] == 0.0
    with pytest.raises(ValueError):
        fit_linear_calibration(np.zeros(2), np.zeros(3))


def test_each_sex_gets_its_own_line_and_a_sex_with_too_few_images_the_shared_one() -> None:
    from core.calibration import fit_sex_calibration

    predicted = np.array([10.0, 20.0, 40.0, 80.0, 100.0, 15.0, 30.0, 60.0, 90.0, 120.0])
    male = np.array([True] * 5 + [False] * 5)
    truth = np.where(male, 2.0 * predicted + 1.0, predicted - 5.0)  # boys 2x + 1, girls x - 5
    calibration = fit_sex_calibration(predicted, truth, male)
    assert (calibration.boys.intercept, calibration.boys.slope) == pytest.approx((1.0, 2.0))
    assert (calibration.girls.intercept, calibration.girls.slope) == pytest.approx((-5.0, 1.0))
    np.testing.assert_allclose(calibration.apply(np.array([50.0, 50.0]), np.array([True, False])), [101.0, 45.0])
    few = fit_sex_calibration(predicted[:7], truth[:7], male[:7])  # two girls: too few for a line of their own
    assert few.girls == fit_linear_calibration(predicted[:7], truth[:7]) and few.boys.slope == pytest.approx(2.0)
