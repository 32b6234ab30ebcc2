"""Per-site linear calibration against lines worked out by hand."""

import numpy as np
import pytest

from core.predict.calibration import LinearCalibration, fit_linear_calibration


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
    from core.predict.calibration import fit_sex_calibration

    predicted = np.array([10.0, 20.0, 40.0, 80.0, 100.0, 15.0, 30.0, 60.0, 90.0, 120.0])
    male = np.array([True] * 5 + [False] * 5)
    truth = np.where(male, 2.0 * predicted + 1.0, predicted - 5.0)  # boys 2x + 1, girls x - 5
    calibration = fit_sex_calibration(predicted, truth, male)
    assert (calibration.boys.intercept, calibration.boys.slope) == pytest.approx((1.0, 2.0))
    assert (calibration.girls.intercept, calibration.girls.slope) == pytest.approx((-5.0, 1.0))
    np.testing.assert_allclose(calibration.apply(np.array([50.0, 50.0]), np.array([True, False])), [101.0, 45.0])
    few = fit_sex_calibration(predicted[:7], truth[:7], male[:7])  # two girls: too few for a line of their own
    assert few.girls == fit_linear_calibration(predicted[:7], truth[:7]) and few.boys.slope == pytest.approx(2.0)


def _tiny_model():
    import torch

    from core.model.config import TJNetConfig
    from core.model.tjnet import TJNet

    torch.manual_seed(0)
    return TJNet(TJNetConfig(image_size=48, width=0.25)).eval()


def test_an_attached_calibration_moves_every_prediction_through_its_sexs_line() -> None:
    import torch

    from core.predict.calibration import SexCalibration, attach_calibration
    from core.predict.tta import TTAConfig, forward_tta

    model, images = _tiny_model(), torch.randn(6, 1, 48, 48)
    male = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    line = SexCalibration(boys=LinearCalibration(10.0, 2.0), girls=LinearCalibration(-5.0, 0.5))
    with torch.no_grad():
        for tta in (None, TTAConfig(shift=0.05)):
            raw = forward_tta(model, images, male, tta).expected_months.numpy()
            attach_calibration(model, line)
            calibrated = forward_tta(model, images, male, tta).expected_months.numpy()
            attach_calibration(model, None)
            expected = np.where(male.numpy() == 1.0, 10.0 + 2.0 * raw, np.clip(-5.0 + 0.5 * raw, 0.0, None))
            np.testing.assert_allclose(calibrated, expected, rtol=1e-5)
            np.testing.assert_allclose(forward_tta(model, images, male, tta).expected_months.numpy(), raw)


def test_a_checkpoint_carries_its_sites_line_and_refuses_a_damaged_one(tmp_path) -> None:
    import torch

    from core.predict.calibration import (CalibrationError, SexCalibration, calibration_from_dict, calibration_of,
                                  calibration_to_dict)
    from core.checkpoint import CheckpointError, describe, load_checkpoint, save_checkpoint

    line = SexCalibration(boys=LinearCalibration(3.0, 1.5), girls=LinearCalibration(-2.0, 0.9))
    assert calibration_from_dict(calibration_to_dict(line)) == line
    model = _tiny_model()
    path = save_checkpoint(tmp_path / "m.pt", model, describe(model, site_calibration=calibration_to_dict(line)))
    assert calibration_of(load_checkpoint(path).model) == line
    assert calibration_of(load_checkpoint(save_checkpoint(tmp_path / "p.pt", model, describe(model))).model) is None
    for damaged in ({"boys": {"intercept": 1.0}}, {"boys": {"intercept": 1.0, "slope": float("nan")},
                                                  "girls": {"intercept": 0.0, "slope": 1.0}}, [1, 2]):
        with pytest.raises(CalibrationError):
            calibration_from_dict(damaged)
        bad = tmp_path / "bad.pt"
        torch.save({"state_dict": model.state_dict(), "metadata": describe(model, site_calibration=damaged)}, bad)
        with pytest.raises(CheckpointError, match="site calibration.*damaged"):
            load_checkpoint(bad)
