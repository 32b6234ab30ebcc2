"""Scoring through cached frozen-block features: the uncached predictions, reused only while blocks 1..k are the same."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.checkpoint import describe, save_checkpoint
from core.data import SiteDataConfig
from core.data.dataset import BoneAgeDataset, make_loader
from core.data.manifest import load_manifest
import core.intervals.conformal as conformal
import core.stages.site_finetune as stage
from core.intervals.conformal import predictions_of
from core.model.config import TJNetConfig
from core.model.freeze import freeze_blocks, parse_freeze_spec
from core.model.tjnet import TJNet
from core.predict.calibration import LinearCalibration, SexCalibration, attach_calibration
from core.predict.inference import predict_batch
from core.predict.tta import TTAConfig, forward_tta
from core.stages.site_finetune import FinetuneConfig, finetune_site
from core.train.feature_scoring import ScoringFeatures
from core.train.training import predict
from sim.phantom.writer import generate_site

SIZE = 32
CPU = torch.device("cpu")
TTA = TTAConfig(shift=0.04, scale=0.05)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_site("eu_clinic", 100, tmp_path_factory.mktemp("scoring") / "site", seed=2, image_size=SIZE)


@pytest.fixture(scope="module")
def dataset(folder: Path) -> BoneAgeDataset:
    return BoneAgeDataset(load_manifest(SiteDataConfig(root=folder)).records[:40], SIZE, None, 0)


def _model(seed: int = 0) -> TJNet:
    torch.manual_seed(seed)
    return TJNet(TJNetConfig(image_size=SIZE, width=0.25))


def _counted(function, calls: list[str], name: str):
    return lambda *args, **kwargs: calls.append(name) or function(*args, **kwargs)


def _perturb(block: torch.nn.Module) -> None:
    generator = torch.Generator().manual_seed(1)
    for parameter in block.parameters():
        parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.5)


def _uncached(model: TJNet, dataset: BoneAgeDataset, tta: TTAConfig | None) -> tuple[np.ndarray, np.ndarray]:
    given = predict(model, make_loader(dataset, 64, shuffle=False, seed=0), CPU, tta=tta).predicted_months
    return given, predictions_of(model, dataset, CPU, sex_from_head=True, tta=tta)[0]


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("tta", [None, TTA])
def test_cached_scoring_gives_the_uncached_predictions(dataset: BoneAgeDataset, depth: int,
                                                       tta: TTAConfig | None) -> None:
    model = _model()
    line = SexCalibration(LinearCalibration(3.0, 0.9), LinearCalibration(-2.0, 1.1))
    attach_calibration(model, line)  # a site calibration is applied after the views, as forward_tta does
    given, from_head = _uncached(model, dataset, tta)
    scored = ScoringFeatures(depth).score(model, dataset, CPU, tta, sex_from_head=True)
    assert scored.predicted_months == pytest.approx(given, abs=1e-3)
    assert scored.head_predicted_months == pytest.approx(from_head, abs=1e-3)
    assert not np.allclose(given, from_head)  # the head's sex differs from the given one somewhere: both paths seen
    assert scored.true_months == pytest.approx(dataset.ages_months.numpy())


def test_the_features_are_reused_while_the_frozen_blocks_are_the_same_and_only_then(dataset: BoneAgeDataset) -> None:
    model, scoring = _model(), ScoringFeatures(3)
    freeze_blocks(model, parse_freeze_spec("1-3"))
    first = scoring.score(model, dataset, CPU, TTA).predicted_months
    with torch.no_grad():  # a change in a block after the frozen prefix: the same features, a new tail
        _perturb(model.block4)
    second = scoring.score(model, dataset, CPU, TTA).predicted_months
    assert (scoring.hits, scoring.misses) == (1, 1)
    assert second == pytest.approx(_uncached(model, dataset, TTA)[0], abs=1e-3)
    with torch.no_grad():  # a change in a frozen block: its features are no longer the cached ones
        _perturb(model.block1)
    third = scoring.score(model, dataset, CPU, TTA).predicted_months
    assert (scoring.hits, scoring.misses) == (1, 2)
    assert third == pytest.approx(_uncached(model, dataset, TTA)[0], abs=1e-3)
    assert not np.allclose(third, second, atol=1e-3) and not np.allclose(first, second, atol=1e-3)


def test_a_split_over_the_budget_is_scored_without_the_cache(dataset: BoneAgeDataset) -> None:
    assert ScoringFeatures(3, max_bytes=1000).score(_model(), dataset, CPU, TTA) is None
    assert ScoringFeatures(0).score(_model(), dataset, CPU, TTA) is None  # no frozen prefix: nothing to share


def test_an_unknown_sex_costs_one_plain_pass_before_the_views(dataset: BoneAgeDataset) -> None:
    model = _model().eval()
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    batch = next(iter(make_loader(dataset, 8, shuffle=False, seed=0)))
    male = batch["male"].clone()
    male[::2] = float("nan")
    result = predict_batch(model, batch["image"], male, CPU, TTA)
    assert len(calls) == 1 + len(TTA.views())  # the sex head's pass, then the views with the sex it gave
    with torch.no_grad():
        logits = model(batch["image"], torch.nan_to_num(male, nan=0.0)).sex_logits
        used = torch.where(torch.isnan(male), (torch.softmax(logits, 1)[:, 1] >= 0.5).float(), male)
        expected = forward_tta(model, batch["image"], used, TTA).expected_months
    assert np.array_equal(result.male_used, used.numpy())
    assert result.expected_months == pytest.approx(expected.numpy(), abs=1e-4)


def test_finetune_scores_both_models_and_the_interval_through_one_pass_of_the_frozen_blocks(
        folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model()
    pretrained = save_checkpoint(tmp_path / "pre.pt", model, describe(model, tta=TTA.to_dict()))
    made: list[ScoringFeatures] = []
    init = ScoringFeatures.__init__
    monkeypatch.setattr(ScoringFeatures, "__init__", lambda self, *a, **k: made.append(self) or init(self, *a, **k))
    whole: list[str] = []  # passes of the whole model over a split: the uncached scoring
    for module, name in ((stage, "predict_dataset"), (conformal, "predictions_of")):
        monkeypatch.setattr(module, name, _counted(getattr(module, name), whole, name))
    results = []
    for cache in (True, False):
        whole.clear()
        results.append(finetune_site(pretrained, SiteDataConfig(root=folder), tmp_path / f"{cache}.pt",
                                     FinetuneConfig(epochs=2, device="cpu", progress=False, feature_cache=cache)))
        # uncached: the test split before and after, the val split with the sex given and from the head
        assert whole == ([] if cache else ["predict_dataset", "predict_dataset", "predictions_of", "predictions_of"])
    assert len(made) == 1 and (made[0].misses, made[0].hits) == (2, 1)  # test split once for both models, val once
    cached, uncached = results
    for model_name in ("pretrained", "finetuned"):
        assert cached["test_metrics"][model_name]["mad_months"] == pytest.approx(
            uncached["test_metrics"][model_name]["mad_months"], rel=1e-4)
    for key in ("halfwidth_months", "halfwidth_months_sex_from_head", "n"):
        assert cached["conformal"][key] == pytest.approx(uncached["conformal"][key], rel=1e-4)
