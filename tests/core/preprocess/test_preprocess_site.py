"""The orientation self-check on a folder's own images, and the fit on them when it fails (phantom images only)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.data.config import DataError
from core.preprocess import Pose, PreprocessConfig, apply_pose
from core.preprocess import site
from core.preprocess.config import WEIGHTS_DIR
from core.preprocess.orientation import OrientationModel, OrientationNet, save_orientation
from core.preprocess.site import orientation_for_site, same_image, self_agreement

PACKAGED = WEIGHTS_DIR / "orientation_phantom.pt"


@pytest.fixture(scope="module")
def hands(site_hands: list[np.ndarray]) -> list[np.ndarray]:
    return site_hands


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, hands: list[np.ndarray]) -> list[Path]:
    root = tmp_path_factory.mktemp("site_images")
    paths = []
    for i, image in enumerate(hands):
        paths.append(root / f"{i}.png")
        Image.fromarray(np.rint(image * 255).astype(np.uint8)).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def untrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An orientation model that names poses at random: what a model that does not fit the images looks like."""
    torch.manual_seed(0)
    return save_orientation(tmp_path_factory.mktemp("weights") / "untrained.pt", OrientationNet(), {})


def test_same_image_composes_turns_mirroring_and_inversion() -> None:
    turned = Pose(1, True, True)
    assert same_image((turned, turned), (Pose(), Pose()))
    assert not same_image((turned, Pose(1, True, False)), (Pose(), Pose()))  # polarity left inverted
    assert not same_image((turned, Pose(3, True, True)), (Pose(), Pose()))  # turned the wrong way
    assert not same_image((Pose(2), Pose(0, True)), (Pose(), Pose()))  # a half turn is not a mirror
    # the copy and the original end up alike although both were "corrected" wrongly in the same way
    assert same_image((Pose(2), Pose(2, True)), (Pose(), Pose(0, True)))


def test_a_model_that_names_poses_right_agrees_with_itself_and_a_random_one_does_not(hands, untrained) -> None:
    assert self_agreement(OrientationModel.load(PACKAGED), hands, seed=0) >= site.MIN_AGREEMENT
    assert self_agreement(OrientationModel.load(untrained), hands, seed=0) < 0.5


def test_a_model_that_always_says_upright_fails_the_check(hands) -> None:
    class Upright:
        def predict(self, image: np.ndarray) -> tuple[Pose, float]:
            return Pose(), 1.0

    assert self_agreement(Upright(), hands, seed=0) == 0.0  # every copy is posed; "upright" is never consistent


def test_a_model_that_passes_is_applied_unchanged(folder) -> None:
    config, report = orientation_for_site(PreprocessConfig(), folder)
    assert replace(config, noise_limit=0.0) == PreprocessConfig().resolved()  # the noise gate's limit is measured
    assert config.noise_limit > 0
    assert report["checked"] and report["agreement"] >= site.MIN_AGREEMENT and "fitted" not in report


def test_a_failing_model_is_refitted_on_the_folder_once_then_read_from_the_cache(folder, untrained,
                                                                                  monkeypatch) -> None:
    fits = []

    def fake_fit(train, held_out, out, config, trained_on, init=None):  # a "fit" that yields the packaged model
        fits.append((len(train), init))
        Path(out).write_bytes(PACKAGED.read_bytes())
        return {}

    monkeypatch.setattr(site, "fit_orientation", fake_fit)
    checks, measure = [], site.self_agreement

    def spy(model, images, seed, copies=2):
        checks.append((len(images), copies))
        return measure(model, images, seed, copies)

    monkeypatch.setattr(site, "self_agreement", spy)
    settings = PreprocessConfig(orientation_weights=str(untrained))
    config, report = orientation_for_site(settings, folder)
    assert fits == [(len(folder), untrained.resolve())]  # every image of the folder, from the configured weights
    assert checks == [(len(folder), 2), (len(folder), site.FITTED_CHECK[1])]  # the fitted model is checked closer
    assert Path(config.orientation_weights).parent == site.cache_dir()
    assert report["agreement"] < site.MIN_AGREEMENT <= report["fitted_agreement"]
    again, _ = orientation_for_site(settings, folder)
    assert again == config and len(fits) == 1  # same images: the cached model, no second fit
    steps, copies = site._budget(len(folder), 0).steps, len(folder) * site.FITTED_CHECK[1]
    assert f"fitted on these images ({steps} steps): 100.0% of {copies} copies" in site.describe_check(report)


def test_a_model_that_fails_after_fitting_or_may_not_be_fitted_is_refused_with_what_to_run(folder, untrained,
                                                                                          monkeypatch) -> None:
    settings = PreprocessConfig(orientation_weights=str(untrained))
    with pytest.raises(DataError, match="train-orientation"):
        orientation_for_site(settings, folder, fit=False)
    with pytest.raises(DataError, match="canonical=false"):
        orientation_for_site(PreprocessConfig(orientation_weights=str(untrained), site_fit=False), folder)
    monkeypatch.setattr(site, "FIT", site.OrientationTrainConfig(steps=2, batch_size=4))
    monkeypatch.setattr(site, "FIT_MORE", site.OrientationTrainConfig(steps=2, batch_size=4))
    monkeypatch.setattr(site, "FIT_ROUNDS", 2)  # a real fit, then a real one from its weights
    with pytest.raises(DataError, match="fitted on these images"):
        orientation_for_site(settings, folder)


def _fake_fits(monkeypatch, first: Path, further: Path) -> list[tuple[int, Path]]:
    """Make a fit from the configured weights write ``first``, one from a fitted model ``further``; record them."""
    fits: list[tuple[int, Path]] = []

    def fake_fit(train, held_out, out, config, trained_on, init=None):
        from_configured = Path(init).parent != site.cache_dir()
        Path(out).write_bytes((first if from_configured else further).read_bytes())
        fits.append((config.steps, Path(init)))
        return {}

    monkeypatch.setattr(site, "fit_orientation", fake_fit)
    return fits


def test_a_fit_still_under_the_bar_goes_on_from_its_own_weights_then_passes(folder, untrained,
                                                                            monkeypatch) -> None:
    fits = _fake_fits(monkeypatch, first=untrained, further=PACKAGED)  # the first fit falls short, the next passes
    settings = PreprocessConfig(orientation_weights=str(untrained))
    config, report = orientation_for_site(settings, folder)
    first = site._budget(len(folder), 0).steps
    assert [steps for steps, _ in fits] == [first, site.FIT_MORE.steps]
    assert fits[0][1] == untrained.resolve()
    assert fits[1][1].parent == site.cache_dir()  # the second round starts from the first one's weights
    assert Path(config.orientation_weights) != fits[1][1]
    assert report["fitted_agreement"] >= site.MIN_AGREEMENT and report["fit_steps"] == first + site.FIT_MORE.steps
    assert f"({first + site.FIT_MORE.steps} steps)" in site.describe_check(report)
    again, _ = orientation_for_site(settings, folder)
    assert again == config and len(fits) == 2  # both rounds come from the cache
    monkeypatch.setattr(site, "FIT", replace(site.FIT, lr=site.FIT.lr / 2))
    other, _ = orientation_for_site(settings, folder)
    assert len(fits) == 4 and other != config  # another first budget: both rounds fitted afresh, none taken stale


def test_a_fit_that_never_reaches_the_bar_stops_after_the_last_round_and_refuses(folder, untrained,
                                                                               monkeypatch) -> None:
    fits = _fake_fits(monkeypatch, first=untrained, further=untrained)
    total = site._budget(len(folder), 0).steps + (site.FIT_ROUNDS - 1) * site.FIT_MORE.steps
    with pytest.raises(DataError, match=f"fitted on these images for {total} steps in {site.FIT_ROUNDS} rounds"):
        orientation_for_site(PreprocessConfig(orientation_weights=str(untrained)), folder)
    assert len(fits) == site.FIT_ROUNDS


def test_the_check_is_skipped_on_few_images_or_when_switched_off(folder, untrained) -> None:
    settings = PreprocessConfig(orientation_weights=str(untrained))
    assert orientation_for_site(settings, folder[:site.MIN_SITE_IMAGES - 1])[1]["checked"] is False
    off = PreprocessConfig(orientation_weights=str(untrained), site_check=False, noise_gate=False)
    assert orientation_for_site(off, folder) == (off.resolved(), {"checked": False})


def test_a_posed_copy_is_named_consistently_by_the_packaged_model(hands) -> None:
    model = OrientationModel.load(PACKAGED)
    own, _ = model.predict(hands[0])
    applied = Pose(3, True, True)
    named, _ = model.predict(apply_pose(hands[0], applied))
    assert same_image((applied, named), (Pose(), own))
