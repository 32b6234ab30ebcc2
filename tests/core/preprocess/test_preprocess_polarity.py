"""Polarity from physical evidence and from the file: settled before the orientation model's inversion head votes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from core.data.images import declares_polarity
from core.preprocess import PreprocessConfig, Preprocessor
from core.preprocess.config import INVERTED
from core.preprocess.orientation import OrientationModel, network_input
from core.preprocess.polarity import PolarityEvidence, polarity_evidence, settled_polarity
from core.preprocess.segment import constant_box
from core.preprocess.stress import collimation, text_marker
from sim.phantom.synth import synthesize
from tests.core.data.data_sites import write_dicom, write_image
from tests.core.preprocess.conftest import canonical_profile

VARIANTS = {
    "as made": lambda x: x,
    "bright collimator band": lambda x: collimation(x, np.random.default_rng(0)),
    "burned-in marker": lambda x: text_marker(x, np.random.default_rng(0)),
    "black padding": lambda x: np.pad(x, 40),
    "white padding": lambda x: np.pad(x, 40, constant_values=1.0),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_polarity_is_settled_right_on_most_phantoms_and_their_inverted_copies(site_hands, variant) -> None:
    images = [VARIANTS[variant](image) for image in site_hands]
    bright = [settled_polarity(image) for image in images]
    inverted = [settled_polarity(1.0 - image) for image in images]
    assert True not in bright and False not in inverted  # never wrong
    assert bright.count(False) >= 0.75 * len(images) and inverted.count(True) >= 0.75 * len(images)


def test_collimated_phantom_films_are_left_to_the_model_rather_than_settled_wrongly() -> None:
    """Tilted, noisy collimator borders brighter than the field fool the background alone: the bone score must
    agree before anything is settled."""
    images = [synthesize(canonical_profile(collimation=1.0, markers=1.0), seed=11, index=i).image for i in range(12)]
    backgrounds = [polarity_evidence(image).background for image in images]
    assert min(backgrounds) < 0  # the background alone would invert at least one correct film
    assert True not in [settled_polarity(image) for image in images]
    assert False not in [settled_polarity(1.0 - image) for image in images]


@pytest.mark.parametrize("level", [0.0, 0.5, 1.0])
def test_constant_padding_of_any_level_is_cut_and_nothing_else(phantom_image, level) -> None:
    h, w = phantom_image.shape
    padded = np.pad(phantom_image, ((10, 20), (30, 5)), constant_values=level)
    assert constant_box(padded) == (10, 10 + h, 30, 30 + w)
    assert constant_box(phantom_image) == (0, h, 0, w)


def test_the_orientation_model_sees_the_same_input_with_or_without_padding(phantom_image) -> None:
    padded = np.pad(phantom_image, 50)
    assert np.allclose(network_input(padded), network_input(phantom_image), atol=1e-5)


class _FixedNet(nn.Module):
    """An orientation network that names no turn and no mirroring, surely, and 'inverted' with a given probability."""

    size, width = 64, 16

    def __init__(self, p_inverted: float) -> None:
        super().__init__()
        self.p = p_inverted

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        sure = torch.tensor([[9.0, -9.0, -9.0, -9.0]])
        p = torch.tensor([[1.0 - self.p, self.p]])
        return {"turns": sure, "mirrored": sure[:, :2], "inverted": p.log(), "angle": torch.zeros(1)}


@pytest.mark.parametrize("p_inverted", [0.02, 0.45, 0.55, 0.98])
def test_settled_polarity_replaces_the_inversion_vote_and_a_sure_contrary_vote_refuses(phantom_image,
                                                                                        p_inverted) -> None:
    model = OrientationModel(_FixedNet(p_inverted), {})
    others = float(torch.tensor([9.0, -9.0, -9.0, -9.0]).softmax(0)[0] * torch.tensor([9.0, -9.0]).softmax(0)[0])
    free, _ = model.predict(phantom_image)
    assert free.inverted == (p_inverted > 0.5)
    for settled in (False, True):
        pose, confidence = model.predict(phantom_image, settled)
        agrees = (p_inverted > 0.5) == settled
        assert pose.inverted == settled
        expected = others if agrees else others * (p_inverted if settled else 1.0 - p_inverted)
        assert confidence == pytest.approx(expected, rel=1e-4)


def _with_net(config: PreprocessConfig, p_inverted: float) -> Preprocessor:
    preprocessor = Preprocessor(config)
    preprocessor._orientation = OrientationModel(_FixedNet(p_inverted), {})
    return preprocessor


def test_the_pipeline_lets_clear_evidence_overrule_an_unsure_inversion_head(site_hands) -> None:
    image = next(x for x in site_hands if settled_polarity(1.0 - x) is True)
    inverted = 1.0 - image
    with_evidence = _with_net(PreprocessConfig(), 0.45)(inverted)  # the head leans 'bone bright': wrong
    assert with_evidence.pose.inverted and INVERTED in with_evidence.flags and with_evidence.refused is None
    clean = _with_net(PreprocessConfig(), 0.45)(image).image  # the same canonical image (CLAHE's bins aside)
    assert np.abs(with_evidence.image - clean).mean() < 0.005
    without = _with_net(PreprocessConfig(physical_polarity=False), 0.45)(inverted)
    assert not without.pose.inverted and INVERTED not in without.flags


def test_a_declared_polarity_is_never_inverted_and_a_contrary_sure_vote_refuses(site_hands) -> None:
    image = site_hands[0]
    kept = _with_net(PreprocessConfig(physical_polarity=False), 0.45)(image, polarity_declared=True)
    assert not kept.pose.inverted and kept.refused is None
    contrary = _with_net(PreprocessConfig(physical_polarity=False), 0.98)(image, polarity_declared=True)
    assert not contrary.pose.inverted and INVERTED not in contrary.flags and contrary.refused is not None
    assert not _with_net(PreprocessConfig(physical_polarity=False), 0.98)(image).refused  # undeclared: the vote


def test_a_dicom_declares_its_polarity_and_a_png_does_not(tmp_path: Path, phantom_image) -> None:
    assert declares_polarity(write_dicom(tmp_path / "a.dcm", phantom_image, "MONOCHROME1"))
    assert declares_polarity(write_dicom(tmp_path / "b.dcm", phantom_image, "MONOCHROME2"))
    assert not declares_polarity(write_image(tmp_path / "c.png", phantom_image, "png8"))
    (tmp_path / "d.dcm").write_bytes(b"not a dicom")
    assert not declares_polarity(tmp_path / "d.dcm")


@pytest.mark.parametrize("background, bone, settled", [(0.2, 0.3, False), (-0.2, -0.3, True), (0.2, -0.3, None),
                                                       (0.2, 0.01, None), (0.01, 0.5, None), (-0.01, -0.5, None)])
def test_polarity_is_settled_only_when_both_scores_agree_clear_of_their_margins(background, bone, settled) -> None:
    assert PolarityEvidence(background, bone).inverted is settled


def test_a_marker_on_a_film_found_inverted_only_by_the_model_is_still_in_painted(site_hands) -> None:
    """Undecided polarity: bands and markers are cleaned as the image comes (where an inverted film's marker is
    dark, so missed); once the model has undone the inversion the marker is in-painted."""
    from core.preprocess.stress import text_marker

    clean = site_hands[1]
    marked = text_marker(clean, np.random.default_rng(0))
    ink = marked != clean
    settings = PreprocessConfig(physical_polarity=False, equalize=False, small_angle=False)
    result = _with_net(settings, 0.98)(1.0 - marked)
    assert result.pose.inverted and result.refused is None
    assert np.abs(result.image - clean)[ink].mean() < 0.25 * np.abs(marked - clean)[ink].mean()


def test_a_film_settled_as_inverted_is_cleaned_as_its_inverse(site_hands) -> None:
    """A burned-in marker is bright on the film as it was taken: on its stored inverse it is dark, and is found
    only when the film is cleaned the right way round."""
    from core.preprocess.stress import text_marker

    marked = {i: text_marker(x, np.random.default_rng(0)) for i, x in enumerate(site_hands)}
    index = next(i for i, x in marked.items() if settled_polarity(1.0 - x) is True)
    clean, ink = site_hands[index], marked[index] != site_hands[index]
    settings = PreprocessConfig(equalize=False, small_angle=False)
    result = _with_net(settings, 0.98)(1.0 - marked[index])
    assert result.pose.inverted and result.refused is None
    assert np.abs(result.image - clean)[ink].mean() < 0.25 * np.abs(marked[index] - clean)[ink].mean()
