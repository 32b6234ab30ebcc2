"""`python -m server distill-targets` and `server pretrain --teacher`: an ensemble's targets, and a student that
learns from them (phantom site, CPU)."""

import json

import numpy as np
import pytest
import torch

from core.checkpoint import describe, file_sha256, load_checkpoint, save_checkpoint
from core.data import SiteDataConfig, make_loader
from core.data.manifest import load_manifest
from core.data.views import load_site_views
from core.model.config import TJNetConfig
from core.model.tjnet import TJNet
from core.predict.tta import PRETRAIN_TTA
from core.train.distill import TeacherTargets
from core.train.training import predict
from server.cli import main
from sim.phantom.writer import generate_site

ARGS = ["--epochs", "2", "--image-size", "48", "--width", "0.25", "--batch-size", "8", "--no-progress", "--seed", "4"]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return generate_site("rsna", 64, tmp_path_factory.mktemp("distill") / "site", seed=8, image_size=48)


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    root = tmp_path_factory.mktemp("members")
    paths = {}
    for name, seed, head in (("a", 0, "paper"), ("b", 1, "paper"), ("months", 2, "months"), ("reg", 3, "regression")):
        torch.manual_seed(seed)
        model = TJNet(TJNetConfig(image_size=48, width=0.25, head=head))
        paths[name] = save_checkpoint(root / f"{name}.pt", model, describe(model))
    return paths


def test_the_targets_are_the_members_mean_over_the_views_on_every_split(site, members, tmp_path, capsys):
    out = tmp_path / "teacher.npz"
    assert main(["distill-targets", "--models", str(members["a"]), str(members["b"]), "--data", str(site),
                 "--out", str(out), "--tta", "default", "--device", "cpu", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    targets = TeacherTargets.load(out)
    data = load_site_views(SiteDataConfig(site), 48, (None,))
    ids, expected, true = [], [], []
    for split in ("train", "val", "test"):
        dataset = getattr(data, split)
        loader = make_loader(dataset, 16, shuffle=False, seed=0)
        ages = [predict(load_checkpoint(members[m]).model, loader, torch.device("cpu"), tta=PRETRAIN_TTA)
                for m in ("a", "b")]
        ids += [r.image_id for r in dataset.records]
        expected.append((ages[0].predicted_months + ages[1].predicted_months) / 2)
        true.append(ages[0].true_months)
        mad = float(np.mean(np.abs(expected[-1] - true[-1])))
        assert report[split]["teacher_mad_months"] == pytest.approx(mad, abs=1e-3)
        assert report[split]["n_images"] == len(dataset)
    assert targets.image_ids == tuple(ids) and report["tta"] == PRETRAIN_TTA.to_dict()
    np.testing.assert_allclose(targets.ages_months, np.concatenate(expected), atol=1e-3)
    np.testing.assert_allclose(targets.probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert [m["sha256"] for m in targets.metadata["members"]] == [file_sha256(members[m]) for m in ("a", "b")]


@pytest.mark.parametrize("names, message", [(("a", "months"), "class heads differ"),
                                            (("a", "reg"), "regression head"),
                                            (("a", "a"), "one of the --models")])
def test_members_that_cannot_make_one_teacher_are_one_line_errors(site, members, tmp_path, capsys, names, message):
    out = members["a"] if message == "one of the --models" else tmp_path / "t.npz"
    code = main(["distill-targets", "--models", *(str(members[n]) for n in names), "--data", str(site),
                 "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "\n" not in err
    assert not (tmp_path / "t.npz").exists()


def _teacher_at(site, path, months: float, drop: int = 0):
    """Every image's teacher says `months` (a near one-hot on its class of the paper's grid)."""
    ids = [r.image_id for r in load_manifest(SiteDataConfig(site)).records][drop:]
    probabilities = np.full((len(ids), 77), 1e-4, dtype=np.float32)
    probabilities[:, int(months // 3)] = 1.0
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    return TeacherTargets(tuple(ids), probabilities, probabilities @ (np.arange(77) * 3.0), 3.0, {}).save(path)


def _val_ages(path, site):
    loaded = load_checkpoint(path)
    loader = make_loader(load_site_views(SiteDataConfig(site), 48, (None,), splits=("val",)).val, 16, False, 0)
    return predict(loaded.model, loader, torch.device("cpu")).predicted_months


def test_a_student_moves_towards_its_teacher(site, tmp_path):
    """A teacher that gives every image 30 months pulls the student's val predictions there: the test fails if
    pretrain ignores --teacher (the student would be the plain run, seed for seed)."""
    teacher = _teacher_at(site, tmp_path / "teacher.npz", 30.0)
    fast = [*ARGS, "--lr", "0.01"]  # a dozen steps: enough to move the output at this rate
    assert main(["pretrain", "--data", str(site), "--out", str(tmp_path / "plain.pt"), *fast]) == 0
    assert main(["pretrain", "--data", str(site), "--out", str(tmp_path / "student.pt"), *fast,
                 "--teacher", str(teacher), "--distill-weight", "20"]) == 0
    plain, student = _val_ages(tmp_path / "plain.pt", site), _val_ages(tmp_path / "student.pt", site)
    assert np.mean(np.abs(student - 30.0)) < 0.5 * np.mean(np.abs(plain - 30.0)), (plain.mean(), student.mean())
    metadata = load_checkpoint(tmp_path / "student.pt").metadata
    assert metadata["teacher"]["sha256"] == file_sha256(teacher) and metadata["loss_config"]["distill_weight"] == 20
    assert "teacher" not in load_checkpoint(tmp_path / "plain.pt").metadata


@pytest.mark.parametrize("extra, message", [
    (["--teacher", "GOOD"], "go together"),
    (["--distill-weight", "1"], "go together"),
    (["--teacher", "NOFILE", "--distill-weight", "1"], "not a teacher-targets file"),
    (["--teacher", "SHORT", "--distill-weight", "1"], "no row for 1 of the"),
    (["--teacher", "GOOD", "--distill-weight", "1", "--head", "months"], "not the student's"),
    (["--teacher", "GOOD", "--distill-weight", "1", "--sex-specific"], "--sex-specific"),
    (["--teacher", "GOOD", "--distill-weight", "1", "--head", "regression"], "needs a class head"),
    (["--teacher", "GOOD", "--distill-weight", "-1"], "distillation needs"),
])
def test_bad_teacher_settings_are_one_line_and_exit_code_2(site, tmp_path, capsys, extra, message):
    files = {"GOOD": _teacher_at(site, tmp_path / "good.npz", 30.0), "NOFILE": tmp_path / "nothing.npz",
             "SHORT": _teacher_at(site, tmp_path / "short.npz", 30.0, drop=1)}
    code = main(["pretrain", "--data", str(site), "--out", str(tmp_path / "x.pt"), *ARGS,
                 *(str(files.get(value, value)) for value in extra)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "\n" not in err, err
    assert not (tmp_path / "x.pt").exists()
