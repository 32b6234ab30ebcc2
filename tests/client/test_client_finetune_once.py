"""`finetune --compare` and `evaluate --split all` read and preprocess each image once; the calibrated row."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from client.__main__ import main
from core.stages.central import evaluate_checkpoint
from core.checkpoint import describe, save_checkpoint
from core.data import AugmentConfig, BoneAgeDataset, SiteDataConfig
from core.data import dataset as dataset_module
from core.data.pool import DecodedPool
from core.stats.metrics import Predictions
from core.model.config import TJNetConfig
from core.model.tjnet import TJNet
from core.preprocess import PreprocessConfig
from core.data.manifest import Record
from core.data.split import split_of
from core.stages.freeze_compare import calibrated_folds, inner_split
from sim.phantom.writer import generate_site

PREPROCESS = PreprocessConfig(canonical=False, small_angle=False, output_size=32)
N_IMAGES = 24


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("once")
    folder = generate_site("eu_clinic", N_IMAGES, root / "site", seed=2, image_size=32)
    torch.manual_seed(0)
    model = TJNet(TJNetConfig(image_size=32, width=0.25))
    return folder, save_checkpoint(root / "pretrained.pt", model, describe(model, preprocess=PREPROCESS.to_dict()))


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    original = dataset_module.read_image

    def counting(path: Path):
        seen.append(Path(path).name)
        return original(path)

    monkeypatch.setattr(dataset_module, "read_image", counting)
    return seen


def test_compare_with_out_reads_each_image_once(site: tuple[Path, Path], tmp_path: Path, reads: list[str],
                                                capsys: pytest.CaptureFixture) -> None:
    folder, pretrained = site
    code = main(["finetune", "--pretrained", str(pretrained), "--data", str(folder), "--compare", "--folds", "2",
                 "--specs", "1-4,none", "--epochs", "1", "--json", "--device", "cpu", "--out", str(tmp_path / "s.pt")])
    rows = json.loads(capsys.readouterr().out)
    assert code == 0 and [r["freeze"] for r in rows] == ["pretrained", "calibrated", "1-4", "none"]
    assert len(reads) == N_IMAGES and len(set(reads)) == N_IMAGES


def test_evaluate_all_reads_each_image_once(site: tuple[Path, Path], reads: list[str]) -> None:
    metrics = evaluate_checkpoint(site[1], SiteDataConfig(site[0]), "all", "cpu")
    assert metrics["n"] == N_IMAGES and len(reads) == N_IMAGES


def test_the_pool_gives_the_images_a_dataset_decodes_itself(site: tuple[Path, Path]) -> None:
    pool = DecodedPool(SiteDataConfig(site[0]), 32, PREPROCESS)
    some = pool.records[::3]
    for augment in (None, AugmentConfig()):
        own = BoneAgeDataset(some, 32, augment, 0, preprocess=PREPROCESS)
        assert np.array_equal(pool.dataset(some, augment).images, own.images)


def test_the_calibrated_row_fits_a_line_on_the_other_folds() -> None:
    true = np.array([20.0, 60.0, 100.0, 140.0, 180.0, 220.0])
    predicted = 70.0 + 0.5 * true  # compressed towards the mean: a line undoes it exactly
    male = np.zeros(6)
    folds = [Predictions(predicted[i::2], true[i::2], male[i::2]) for i in range(2)]
    for fold in calibrated_folds(folds):
        assert np.allclose(fold.predicted_months, fold.true_months)
    shifted = [Predictions(predicted[i::2], true[i::2] + 10.0 * i, male[i::2]) for i in range(2)]
    first, _ = calibrated_folds(shifted)  # fold 0 gets the line of fold 1 (labels 10 months higher)
    assert np.allclose(first.predicted_months, first.true_months + 10.0)


def test_a_fold_whose_ids_all_hash_to_validation_still_trains() -> None:
    """A site cut from another set's test split by the same id hash: every id hashes past the 90 % mark."""
    ids = [str(i) for i in range(2000) if split_of(str(i)) == "test"][:40]
    records = [Record(i, Path(f"{i}.png"), 100.0, True) for i in ids]
    inner = inner_split(records, seed=0)
    assert len(inner["train"]) == 36 and len(inner["val"]) == 4
    assert inner == inner_split(records, seed=0)
    mixed = [Record(str(i), Path(f"{i}.png"), 100.0, True) for i in range(40)]
    by_hash = inner_split(mixed, seed=0)  # the usual case is unchanged: the hash decides
    assert all(split_of(r.image_id, (0.9, 0.1, 0.0)) == "train" for r in by_hash["train"]) and by_hash["val"]
