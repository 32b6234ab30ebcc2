"""A checkpoint's input settings are read back in one place, by every reader that feeds it images."""

from __future__ import annotations

import re
from pathlib import Path

from core.checkpoint import describe, load_checkpoint, save_checkpoint
from core.inputs import InputSettings
from core.model.config import TJNetConfig
from core.model.tjnet import TJNet
from core.preprocess import PreprocessConfig
from core.predict.tta import TTAConfig

ROOT = Path(__file__).resolve().parents[2]


def test_the_settings_a_checkpoint_records_are_read_back(tmp_path: Path) -> None:
    model = TJNet(TJNetConfig(image_size=40, width=0.25))
    preprocess = PreprocessConfig()
    path = save_checkpoint(tmp_path / "m.pt", model, describe(model, preprocess=preprocess.to_dict(),
                                                               tta={"shift": 0.04, "scale": 0.05}))
    inputs = InputSettings.of(load_checkpoint(path))
    assert inputs.image_size == 40 and inputs.tta == TTAConfig(shift=0.04, scale=0.05)
    assert inputs.preprocess == preprocess and inputs.views == (preprocess,)
    plain = save_checkpoint(tmp_path / "p.pt", model, describe(model))
    bare = InputSettings.of(load_checkpoint(plain))
    assert bare.preprocess is None and not bare.tta.enabled and bare.image_size == 40


def test_readers_use_the_one_object_rather_than_the_metadata() -> None:
    by_hand = re.compile(r"\b(preprocess_config_of|tta_config_of|views_of)\(")
    readers = {str(p.relative_to(ROOT)) for package in ("client", "server", "sim", "core")
               for p in (ROOT / package).rglob("*.py") if by_hand.search(p.read_text(encoding="utf-8"))}
    readers -= {"core/inputs.py", "core/predict/tta.py", "core/preprocess/pipeline.py", "core/preprocess/__init__.py"}
    assert not readers, sorted(readers)  # each reads them through InputSettings.of


def test_a_derived_model_inherits_the_preprocessing_and_tta_its_parent_records_and_nothing_else(tmp_path: Path) -> None:
    model = TJNet(TJNetConfig(image_size=40, width=0.25))
    tta, preprocess = {"shift": 0.04, "scale": 0.05}, PreprocessConfig().to_dict()
    parent = save_checkpoint(tmp_path / "m.pt", model, describe(model, preprocess=preprocess, tta=tta, seed=3,
                                                                conformal={"halfwidth_months": 9.0}))
    assert InputSettings.of(load_checkpoint(parent)).inherited() == {"preprocess": preprocess, "tta": tta}
    bare = save_checkpoint(tmp_path / "p.pt", model, describe(model))
    assert InputSettings.of(load_checkpoint(bare)).inherited() == {}  # no TTA recorded: descendants stay one-pass
