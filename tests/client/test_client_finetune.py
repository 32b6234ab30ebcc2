"""`python -m client finetune`: one site alone, provenance in the checkpoint, --compare with intervals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from client.__main__ import main
from core.stages.central import evaluate_checkpoint
from core.checkpoint import describe, file_sha256, load_checkpoint, save_checkpoint
from core.data import SiteDataConfig
from core.stats.metrics import Predictions
from core.model.config import TJNetConfig
from core.model.tjnet import TJNet
from core.preprocess import PreprocessConfig
from core.predict.tta import TTAConfig
from core.stages.freeze_compare import folds_of, summarise_specs
from core.stages.site_finetune import FINETUNE_SCHEMA
from sim.phantom.writer import generate_site

# a cheap preprocessing (contrast equalisation only) that the site's model must inherit
PREPROCESS = PreprocessConfig(canonical=False, small_angle=False, output_size=32).to_dict()
TTA = {"shift": 0.04, "scale": 0.05}  # and the test-time augmentation, which it must also be scored with


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("finetune")
    folder = generate_site("eu_clinic", 30, root / "site", seed=1, image_size=32)
    torch.manual_seed(0)
    model = TJNet(TJNetConfig(image_size=32, width=0.25))
    return folder, save_checkpoint(root / "pretrained.pt", model, describe(model, preprocess=PREPROCESS, tta=TTA))


def test_finetune_writes_a_checkpoint_with_provenance(site: tuple[Path, Path], tmp_path: Path, capsys,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import core.stages.site_finetune as stage

    fitted_with = []  # the interval is fitted with the TTA the model records (too few images here for one)
    monkeypatch.setattr(stage, "conformal_metadata", lambda *a, tta=None, **k: fitted_with.append(tta) or {})
    folder, pretrained = site
    out = tmp_path / "site.pt"
    code = main(["finetune", "--pretrained", str(pretrained), "--data", str(folder), "--freeze", "1-4",
                 "--epochs", "1", "--out", str(out), "--json", "--device", "cpu"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["freeze"] == "1-4" and set(printed["test_mad_months"]) == {"pretrained", "finetuned"}
    loaded = load_checkpoint(out)
    provenance = loaded.metadata["provenance"]
    assert provenance["pretrained_sha256"] == file_sha256(pretrained)
    assert provenance["freeze"] == "1-4" and provenance["data"]["summary"]["n_usable"] == 30
    assert loaded.metadata["frozen_blocks"] == [1, 2, 3, 4]
    recorded = provenance["finetune_config"]  # the settings applied, under the record's names
    assert set(recorded) == set(FINETUNE_SCHEMA.settings) and (recorded["freeze"], recorded["epochs"]) == ("1-4", 1)
    assert loaded.metadata["preprocess"] == PREPROCESS  # carried over from the pretrained checkpoint
    assert loaded.metadata["tta"] == TTA and fitted_with == [TTAConfig(**TTA)]  # so are its TTA and its interval's
    original = load_checkpoint(pretrained).model.state_dict()
    changed = [k for k, v in loaded.model.state_dict().items() if not torch.equal(v, original[k])]
    assert changed and all(k.startswith(("block5", "block6")) for k in changed)
    metrics = evaluate_checkpoint(out, SiteDataConfig(root=folder), device="cpu")  # with the TTA it records
    assert metrics["mad_months"] == pytest.approx(printed["test_mad_months"]["finetuned"], rel=1e-4)
    before = evaluate_checkpoint(pretrained, SiteDataConfig(root=folder), device="cpu")  # scored alike: TTA on both
    assert before["mad_months"] == pytest.approx(printed["test_mad_months"]["pretrained"], rel=1e-4)
    one_pass = evaluate_checkpoint(pretrained, SiteDataConfig(root=folder), device="cpu", one_pass=True)
    assert abs(one_pass["mad_months"] - before["mad_months"]) > 1e-3  # (the TTA changes the figure it checks)


def test_bad_input_is_one_line(site: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    folder, pretrained = site
    base = ["finetune", "--pretrained", str(pretrained), "--data", str(folder)]
    assert main(base) == 2
    assert "--out is required" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "x.pt"), "--freeze", "7"]) == 2
    assert "freeze spec" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "x.pt"), "--freeze", " "]) == 2  # not 'train every block'
    assert "--freeze = ' ' is not a valid value (empty" in capsys.readouterr().err and not (tmp_path / "x.pt").exists()
    tiny = tmp_path / "tiny"  # a 3-row site: fine-tuned and 'test MAD nan' reported as a result before
    (tiny / "images").mkdir(parents=True)
    header, *rows = (folder / "labels.csv").read_text().splitlines()
    (tiny / "labels.csv").write_text("\n".join([header, *rows[:3]]) + "\n")
    for row in rows[:3]:
        name = row.split(",")[0]
        for image in (folder / "images").glob(f"{name}.*"):
            (tiny / "images" / image.name).write_bytes(image.read_bytes())
    assert main(["finetune", "--pretrained", str(pretrained), "--data", str(tiny), "--out", str(tmp_path / "t.pt")]) == 2
    assert "fine-tuning needs all three splits" in capsys.readouterr().err and not (tmp_path / "t.pt").exists()
    assert main(["finetune", "--pretrained", str(tmp_path / "none.pt"), "--data", str(folder),
                 "--out", str(tmp_path / "y.pt")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(base + ["--out", str(pretrained)]) == 2
    assert main(base + ["--compare", "--folds", "20"]) == 2
    assert "too few" in capsys.readouterr().err
    assert main(base + ["--compare", "--specs", "1,2,3"]) == 2  # three specs or the spec 1-3?
    assert "ambiguous" in capsys.readouterr().err


def test_compare_runs_every_spec_out_of_fold(site: tuple[Path, Path], capsys) -> None:
    folder, pretrained = site
    code = main(["finetune", "--pretrained", str(pretrained), "--data", str(folder), "--compare", "--folds", "2",
                 "--specs", "1-4", "--epochs", "1", "--json", "--device", "cpu"])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["freeze"] for r in rows] == ["pretrained", "calibrated", "1-4"]
    assert all(r["n"] == 30 and r["mad_ci_low"] <= r["mad_months"] <= r["mad_ci_high"] for r in rows)
    assert rows[0]["diff_vs_pretrained"] is None and all(len(r["diff_vs_pretrained"]) == 3 for r in rows[1:])
    scored = evaluate_checkpoint(pretrained, SiteDataConfig(root=folder), split="all", device="cpu")  # recorded TTA
    assert rows[0]["mad_months"] == pytest.approx(scored["mad_months"], rel=1e-4)


def test_folds_are_disjoint_and_cover_the_site() -> None:
    from core.data.manifest import Record

    records = [Record(str(i), Path(f"{i}.png"), float(i), i % 2 == 0) for i in range(23)]
    folds = folds_of(records, 5, seed=0)
    ids = [r.image_id for fold in folds for r in fold]
    assert sorted(ids) == sorted(r.image_id for r in records) and len(set(ids)) == 23
    assert sorted(len(f) for f in folds) == [4, 4, 5, 5, 5]
    assert folds_of(records, 5, seed=0) == folds


def test_summary_pools_folds_and_pairs_with_the_pretrained_model() -> None:
    true = np.array([10.0, 20.0, 30.0, 40.0])
    male = np.zeros(4)
    half = lambda p: [Predictions(p[:2], true[:2], male[:2]), Predictions(p[2:], true[2:], male[2:])]  # noqa: E731
    results = summarise_specs({"pretrained": half(true + 6.0), "1-3": half(true + np.array([2.0, -2.0, 2.0, -2.0]))},
                              3.0, "months")
    assert results[0].mad.estimate == 6.0 and results[1].mad.estimate == 2.0
    assert (results[1].versus_pretrained.estimate, results[1].versus_pretrained.high) == (-4.0, -4.0)


def test_the_feature_cache_trains_the_same_model_and_the_flag_turns_it_off(site: tuple[Path, Path], tmp_path: Path,
                                                                          capsys, monkeypatch) -> None:
    from core.train.feature_cache import FeatureCache

    calls = []
    prepare = FeatureCache.prepare
    monkeypatch.setattr(FeatureCache, "prepare", lambda self, *a, **k: calls.append(1) or prepare(self, *a, **k))
    folder, pretrained = site
    mads = []
    for flags in ([], ["--no-feature-cache"]):
        calls.clear()
        assert main(["finetune", "--pretrained", str(pretrained), "--data", str(folder), "--freeze", "1-3",
                     "--epochs", "2", "--out", str(tmp_path / "site.pt"), "--json", "--device", "cpu", *flags]) == 0
        mads.append(json.loads(capsys.readouterr().out)["test_mad_months"]["finetuned"])
        assert len(calls) == (0 if flags else 2)  # the training and the validation split
    assert mads[0] == pytest.approx(mads[1], rel=1e-3)  # epochs 1 and 2 see the same views either way


def test_each_finetune_setting_has_one_flag_one_field_and_one_default(tmp_path: Path, monkeypatch) -> None:
    import argparse
    from dataclasses import asdict, fields

    import client.finetune_command as command
    from core.cli import DEVICE_DEFAULT, SEED_DEFAULT
    from core.stages.site_finetune import FinetuneConfig

    assert {f.name for f in fields(FinetuneConfig)} == set(FINETUNE_SCHEMA.settings)
    parser = argparse.ArgumentParser()
    command.add_parser(parser.add_subparsers())
    options = {o for a in parser._subparsers._group_actions[0].choices["finetune"]._actions for o in a.option_strings}
    assert {s.option for s in FINETUNE_SCHEMA.settings.values() if s.name != "progress"} <= options
    assert (FINETUNE_SCHEMA.default("seed"), FINETUNE_SCHEMA.default("device")) == (SEED_DEFAULT, DEVICE_DEFAULT)
    seen = []
    monkeypatch.setattr(command, "finetune_site", lambda *a: seen.append(a[3]) or {
        "test_metrics": {"pretrained": {"mad_months": 1.0}, "finetuned": {"mad_months": 1.0, "n": 1}},
        "provenance": {"freeze": "x"}})
    base = ["finetune", "--pretrained", str(tmp_path / "p.pt"), "--data", str(tmp_path), "--out", str(tmp_path / "o")]
    assert main(base + ["--json"]) == 0 and seen[-1] == FinetuneConfig(progress=False)  # flags' defaults: the record's
    changed = {"freeze": "1-2", "epochs": 3, "lr": 0.01, "batch_size": 4, "weight_decay": 0.5, "seed": 7, "folds": 3,
               "device": "cpu", "feature_views": 2, "feature_augment": "features"}
    flags = [x for name, value in changed.items() for x in (FINETUNE_SCHEMA[name].option, str(value))]
    assert main(base + flags + ["--no-feature-cache"]) == 0
    assert asdict(seen[-1]) == {**asdict(FinetuneConfig()), **changed, "feature_cache": False}
    assert main(base + ["--epochs", "2.5"]) == 2  # one line, not argparse's usage
    assert main(base + ["--feature-augment", "pixels"]) == 2
