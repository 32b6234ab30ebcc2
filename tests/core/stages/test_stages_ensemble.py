"""The linear ensemble: the fit on toy problems with known answers, and the saved ensemble end to end."""

import numpy as np
import pytest
import torch

from core.stages.central import evaluate_checkpoint
from core.checkpoint import describe, load_checkpoint, save_checkpoint
from core.data import SiteDataConfig
from core.stages.ensemble import EnsembleJob, build_ensemble, fit_linear
from core.errors import ConfigError
from core.model.config import TJNetConfig
from core.model.tjnet import TJNet
from server.cli import main
from sim.phantom.writer import generate_site


def test_fit_recovers_known_weights_and_intercept():
    rng = np.random.default_rng(0)
    members = rng.uniform(0, 200, size=(50, 3))
    target = 0.2 * members[:, 0] + 0.5 * members[:, 1] + 0.3 * members[:, 2] + 7.0
    fit = fit_linear(members, target, np.zeros(50, dtype=int), 1)
    np.testing.assert_allclose(fit.weights, [[0.2, 0.5, 0.3]], atol=1e-9)
    np.testing.assert_allclose(fit.intercepts, [7.0], atol=1e-7)
    np.testing.assert_allclose(fit.apply(members, np.zeros(50, dtype=int)), target, atol=1e-7)


def test_fit_per_sex_recovers_each_sex_own_weights():
    rng = np.random.default_rng(1)
    members = rng.uniform(0, 200, size=(80, 2))
    sex = np.arange(80) % 2
    target = np.where(sex == 1, 0.9 * members[:, 0] + 0.1 * members[:, 1] - 3.0, 0.4 * members[:, 0] + 0.6 * members[:, 1] + 2.0)
    fit = fit_linear(members, target, sex, 2)
    np.testing.assert_allclose(fit.weights, [[0.4, 0.6], [0.9, 0.1]], atol=1e-9)
    np.testing.assert_allclose(fit.intercepts, [2.0, -3.0], atol=1e-7)


def test_fit_of_noisy_members_is_the_least_squares_solution():
    # target = 10 + x, two members: x + noise and a constant; the best weights by hand are (1, 0) up to noise
    x = np.array([0.0, 10.0, 20.0, 30.0])
    members = np.column_stack([x + np.array([1.0, -1.0, 1.0, -1.0]), np.full(4, 50.0)])
    fit = fit_linear(members, x + 10.0, np.zeros(4, dtype=int), 1)
    design = np.column_stack([members[:, 0], np.ones(4)])  # the constant member is collinear with the intercept
    expected = np.linalg.lstsq(design, x + 10.0, rcond=None)[0]
    prediction = fit.apply(members, np.zeros(4, dtype=int))
    np.testing.assert_allclose(prediction, design @ expected, atol=1e-9)


def test_too_few_validation_images_for_the_members_is_refused():
    with pytest.raises(ValueError, match="too few"):
        fit_linear(np.ones((2, 2)), np.ones(2), np.zeros(2, dtype=int), 1)


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    root = tmp_path_factory.mktemp("ens")
    site = generate_site("rsna", 160, root / "site", seed=4, image_size=48)
    paths = []
    for seed, size in ((0, 48), (1, 40)):  # members of two input sizes
        torch.manual_seed(seed)
        model = TJNet(TJNetConfig(image_size=size, width=0.25))
        paths.append(save_checkpoint(root / f"m{seed}.pt", model, describe(model)))
    return site, paths, root


@pytest.mark.parametrize("per_sex", [False, True])
def test_saved_ensemble_is_evaluated_like_any_checkpoint(members, per_sex):
    site, paths, root = members
    out = root / f"ensemble_{per_sex}.pt"
    report = build_ensemble(EnsembleJob(models=tuple(paths), data=SiteDataConfig(site), out=out, per_sex=per_sex,
                                        device="cpu"))
    loaded = load_checkpoint(out)
    assert loaded.metadata["architecture"] == "ensemble" and np.shape(loaded.metadata["ensemble"]["weights"]) == (
        2 if per_sex else 1, 2)
    val = evaluate_checkpoint(out, SiteDataConfig(site), "val", "cpu")
    assert val["mad_months"] == pytest.approx(report["val"]["ensemble"], abs=1e-3)
    for path in paths:  # least squares on val: never a worse val RMSE than a member alone
        assert val["rmse_months"] <= evaluate_checkpoint(path, SiteDataConfig(site), "val", "cpu")["rmse_months"] + 1e-4


def test_ensemble_command_prints_members_and_ensemble(members, capsys):
    site, paths, root = members
    assert main(["ensemble", "--models", *map(str, paths), "--data", str(site), "--out", str(root / "e.pt")]) == 0
    text = capsys.readouterr().out
    assert "m0.pt" in text and "m1.pt" in text and "ensemble" in text and "intercept" in text
    assert main(["ensemble", "--models", str(paths[0]), "--data", str(site), "--out", str(root / "x.pt")]) == 2
    assert "at least two" in capsys.readouterr().err


def test_members_with_one_test_time_augmentation_are_fitted_and_scored_with_it(members):
    """`server pretrain` records TTA by default: an ensemble of such members fits on their augmented predictions and
    records the same setting, so `evaluate` scores it the way it was fitted."""
    site, paths, root = members
    tta = {"shift": 0.04, "scale": 0.05}
    augmented = []
    for path in paths:
        loaded = load_checkpoint(path)
        augmented.append(save_checkpoint(root / f"tta_{path.name}", loaded.model, describe(loaded.model, tta=tta)))
    plain = build_ensemble(EnsembleJob(models=tuple(paths), data=SiteDataConfig(site), out=root / "plain.pt",
                                       device="cpu"))
    report = build_ensemble(EnsembleJob(models=tuple(augmented), data=SiteDataConfig(site), out=root / "tta.pt",
                                        device="cpu"))
    assert load_checkpoint(root / "tta.pt").metadata["tta"] == tta
    assert load_checkpoint(root / "plain.pt").metadata["tta"] == {"shift": 0.0, "scale": 0.0}
    assert report["val"]["ensemble"] != pytest.approx(plain["val"]["ensemble"], abs=1e-4)  # the views were used
    # the 48 px member's column is that member scored its own way, with TTA (the 40 px one reads a resized image)
    own = evaluate_checkpoint(augmented[0], SiteDataConfig(site), "val", "cpu")["mad_months"]
    assert report["val"][augmented[0].name] == pytest.approx(own, abs=1e-3)
    val = evaluate_checkpoint(root / "tta.pt", SiteDataConfig(site), "val", "cpu")
    assert val["tta"] == tta and val["mad_months"] == pytest.approx(report["val"]["ensemble"], abs=1e-3)


def test_members_with_different_test_time_augmentation_are_refused_in_one_line(tmp_path):
    torch.manual_seed(0)
    model = TJNet(TJNetConfig(image_size=48, width=0.25))
    plain = save_checkpoint(tmp_path / "plain.pt", model, describe(model))
    tta = save_checkpoint(tmp_path / "tta.pt", model, describe(model, tta={"shift": 0.04, "scale": 0.0}))
    with pytest.raises(ConfigError, match="different test-time augmentation") as error:
        build_ensemble(EnsembleJob(models=(plain, tta), data=SiteDataConfig(tmp_path / "no-site"), out=tmp_path / "e.pt"))
    assert "tta.pt" in str(error.value) and "plain.pt" in str(error.value) and "\n" not in str(error.value)


def test_a_fit_on_too_few_images_that_does_not_generalise_is_refused():
    """The issue's case: 4 validation images gave weights +953 and -4.3 and an intercept of -108,204 months."""
    from core.stages.ensemble import check_fit_generalises

    rng = np.random.default_rng(3)
    target = np.array([40.0, 95.0, 130.0, 170.0])
    members = np.column_stack([target + rng.normal(0, 25, 4), target + rng.normal(0, 45, 4)])
    with pytest.raises(ValueError, match="does not generalise: on held-out validation images it errs by"):
        check_fit_generalises(members, target, np.zeros(4, dtype=int), 1)
    many = rng.uniform(0, 200, 60)
    good = np.column_stack([many + rng.normal(0, 10, 60), many + rng.normal(0, 10, 60)])
    check_fit_generalises(good, many, np.zeros(60, dtype=int), 1)  # two honest members: averaging helps


def test_out_naming_a_member_is_refused_before_anything_is_read(members):
    site, paths, _ = members
    before = paths[0].read_bytes()
    with pytest.raises(ValueError, match="is one of the --models: an ensemble never overwrites a member"):
        build_ensemble(EnsembleJob(models=tuple(paths), data=SiteDataConfig(site), out=paths[0], device="cpu"))
    assert paths[0].read_bytes() == before
