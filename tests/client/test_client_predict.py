"""`python -m client predict`: formats, DICOM tags, the sex head, worklists, broken files, untouched inputs."""

from __future__ import annotations

import csv
import io
import json
from datetime import date
from pathlib import Path

import numpy as np
import pytest
import torch
from predict_helpers import (HALFWIDTH, HALFWIDTH_FROM_HEAD, radiograph, tagged_dicom, tiny_checkpoint,
                             tree_digest, write_all_formats)

from client import predict as client_predict
from client.__main__ import main
from core.checkpoint import load_checkpoint, save_checkpoint
from core.data import read_image
from core.predict.inference import model_input, predict_batch
from core.predict.tta import TTAConfig
from tests.core.data.data_sites import write_image


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("model") / "model.pt")


def predict(capsys: pytest.CaptureFixture, model: Path, *args: object) -> tuple[int, list[dict], str]:
    code = main(["predict", "--model", str(model), "--json", "--no-progress", *map(str, args)])
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines() if line.strip()], err


def test_every_format_gives_the_same_bone_age(tmp_path: Path, model: Path, capsys: pytest.CaptureFixture) -> None:
    files = write_all_formats(tmp_path / "images")
    code, rows, _ = predict(capsys, model, "--sex", "M", tmp_path / "images")
    assert code == 0 and len(rows) == len(files)
    assert all(r["status"] == "ok" and r["sex"] == "M" and r["sex_source"] == "command line" for r in rows)
    ages = np.array([r["bone_age_months"] for r in rows])
    assert np.all((ages >= 0) & (ages <= 228))
    assert ages.max() - ages.min() < 1.0  # one picture, four encodings
    for row in rows:
        assert row["interval_low_months"] == pytest.approx(max(0.0, row["bone_age_months"] - HALFWIDTH), abs=0.11)
        assert row["interval_coverage"] == 0.9 and len(row["model_sha256"]) == 64
        assert row["chronological_age_months"] is None and row["ba_minus_ca_months"] is None


def test_dicom_tags_give_sex_and_age_and_the_command_line_wins(tmp_path: Path, model: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    path = tagged_dicom(tmp_path / "a.dcm")
    _, (row,), _ = predict(capsys, model, path)
    assert (row["sex"], row["sex_source"], row["patient_id"]) == ("F", "DICOM PatientSex", "P42")
    expected = (date(2025, 9, 1) - date(2015, 3, 1)).days / (365.25 / 12)
    assert row["chronological_age_months"] == pytest.approx(expected, abs=0.05)
    assert "PatientBirthDate" in row["chronological_age_source"] and "StudyDate" in row["chronological_age_source"]
    assert row["ba_minus_ca_months"] == pytest.approx(row["bone_age_months"] - expected, abs=0.1)
    assert row["ba_minus_ca_years"] == pytest.approx(row["ba_minus_ca_months"] / 12, abs=0.01)
    _, (row,), _ = predict(capsys, model, "--sex", "M", "--chronological-age", "9.5", path)
    assert (row["sex"], row["sex_source"], row["chronological_age_months"]) == ("M", "command line", 114.0)


def test_dicom_age_tag_and_acquisition_date_fallbacks(tmp_path: Path, model: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    only_age = tagged_dicom(tmp_path / "age.dcm", birth=None, study=None, age="010Y")
    acquisition = tagged_dicom(tmp_path / "acq.dcm", study=None, age=None, acquisition=date(2020, 3, 1))
    _, (a, b), _ = predict(capsys, model, only_age, acquisition)
    assert (a["chronological_age_months"], a["chronological_age_source"]) == (120.0, "DICOM PatientAge")
    assert b["chronological_age_months"] == pytest.approx(60.0, abs=0.1)
    assert "AcquisitionDate" in b["chronological_age_source"]


def test_unknown_sex_comes_from_the_sex_head_with_the_wider_interval(tmp_path: Path, model: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    path = write_image(tmp_path / "x.png", radiograph(5), "png8")
    _, (row,), _ = predict(capsys, model, "--sex-sure", "0.5", path)  # any answer of the head counts as sure
    checkpoint = load_checkpoint(model)
    _, tensor = model_input(read_image(path), 48)
    with torch.inference_mode():
        logits = checkpoint.model.eval()(tensor[None], torch.zeros(1)).sex_logits
    head_male = bool(torch.argmax(logits[0]) == 1)
    assert row["sex"] == ("M" if head_male else "F")
    assert row["sex_source"].startswith("model's sex head")
    assert "sex predicted by the model" in row["quality_flags"]
    width = row["interval_high_months"] - row["interval_low_months"]
    assert width == pytest.approx(2 * HALFWIDTH_FROM_HEAD, abs=0.2) or row["interval_low_months"] == 0.0
    _, (given,), _ = predict(capsys, model, "--sex", row["sex"], path)
    assert given["bone_age_months"] == row["bone_age_months"]  # the head's sex is fed like a given one


def test_model_without_sex_head_refuses_unknown_sex_only(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = tiny_checkpoint(tmp_path / "nosex.pt", joint_sex=False)
    (tmp_path / "images").mkdir()
    write_image(tmp_path / "images" / "x.png", radiograph(1), "png8")
    tagged_dicom(tmp_path / "images" / "y.dcm", sex="M")
    code, rows, _ = predict(capsys, model, tmp_path / "images")
    by_name = {Path(r["image"]).name: r for r in rows}
    assert code == 0
    assert by_name["x.png"]["status"] == "refused" and "no sex head" in by_name["x.png"]["reason"]
    assert by_name["y.dcm"]["status"] == "ok"


def test_folder_with_broken_files_goes_on_and_inputs_are_untouched(tmp_path: Path, model: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "day"
    write_all_formats(folder)
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.jpg").write_text("not an image")
    (folder / "cut.png").write_bytes((folder / "png8.png").read_bytes()[:60])
    write_image(folder / "flat.png", np.full((40, 30), 0.5), "png8")
    before = tree_digest(folder)
    code, rows, err = predict(capsys, model, "--sex", "F", "--out", tmp_path / "out", "--report", "--heatmap", folder)
    assert code == 0 and tree_digest(folder) == before
    status = {Path(r["image"]).name: (r["status"], r["reason"]) for r in rows}
    assert status["empty.png"] == ("refused", "empty image (0-byte file)")
    assert status["flat.png"][1].startswith("constant image")
    assert status["text.jpg"][1].startswith("unreadable image") and status["cut.png"][1].startswith("unreadable")
    assert sum(s == "ok" for s, _ in status.values()) == 4
    assert "4 image(s) predicted, 4 refused" in err
    saved = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert saved == rows
    assert all(Path(r["heatmap"]).is_file() for r in rows if r["status"] == "ok")


def test_worklist_csv_and_csv_output(tmp_path: Path, model: Path, capsys: pytest.CaptureFixture) -> None:
    write_image(tmp_path / "a.png", radiograph(1), "png8")
    write_image(tmp_path / "b.png", radiograph(2), "png16")
    worklist = tmp_path / "worklist.csv"
    worklist.write_text("path,patient_id,sex,birth_date,study_date,chronological_age\n"
                        "a.png,anna,F,2014-01-10,2024-01-10,\nb.png,ben,M,,,7.25\n")
    code = main(["predict", "--model", str(model), "--no-progress", str(worklist)])
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert code == 0 and [r["patient_id"] for r in rows] == ["anna", "ben"]
    assert rows[0]["sex_source"] == "worklist" and float(rows[0]["chronological_age_months"]) == pytest.approx(120, abs=0.1)
    assert rows[1]["chronological_age"] == "7 y 3 m" and rows[1]["chronological_age_source"] == "worklist"
    assert json.loads(rows[0]["model_provenance"]) == {"interval_calibrated_on": "50 images, val split of phantom"}
    main(["predict", "--model", str(model), "--no-progress", "--sex", "M", "--chronological-age", "3", str(worklist)])
    first = next(csv.DictReader(io.StringIO(capsys.readouterr().out)))  # the command line wins over the worklist
    assert (first["sex"], first["sex_source"], first["chronological_age_months"]) == ("M", "command line", "36.0")


@pytest.mark.parametrize("args, message", [
    (["--sex", "X"], "unknown sex"),
    (["--birth-date", "2020-13-01"], "not a date"),
    (["--chronological-age", "-3"], "not an age"),
    (["--report"], "give --out"),
])
def test_bad_arguments_are_one_line_errors(tmp_path: Path, model: Path, capsys: pytest.CaptureFixture,
                                           args: list[str], message: str) -> None:
    path = write_image(tmp_path / "a.png", radiograph(1), "png8")
    code, _, err = predict(capsys, model, *args, path)
    assert code == 2 and message in err and "Traceback" not in err


def test_out_inside_an_input_folder_is_refused(tmp_path: Path, model: Path, capsys: pytest.CaptureFixture) -> None:
    write_all_formats(tmp_path / "images")
    code, _, err = predict(capsys, model, "--out", tmp_path / "images" / "results", tmp_path / "images")
    assert code == 2 and "inside the input folder" in err
    assert not (tmp_path / "images" / "results").exists()


def test_attention_heat_map_of_a_model_without_cbam_is_a_one_line_error(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    model = tiny_checkpoint(tmp_path / "nocbam.pt", use_cbam=False)
    (tmp_path / "in").mkdir()
    path = write_image(tmp_path / "in" / "a.png", radiograph(1), "png8")
    code, rows, err = predict(capsys, model, "--heatmap", "--heatmap-method", "attention", "--out", tmp_path / "o", path)
    assert code == 2 and "no CBAM" in err and rows == []


def test_a_checkpoint_with_test_time_augmentation_predicts_with_its_views(
        tmp_path: Path, model: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = load_checkpoint(model)
    tta = TTAConfig(shift=0.1, scale=0.1)
    with_tta = save_checkpoint(tmp_path / "tta.pt", loaded.model, dict(loaded.metadata, tta=tta.to_dict()))
    write_image(tmp_path / "hand.png", radiograph(3), "png8")
    seen = []

    def spy(*args, **kwargs):
        seen.append(args[4] if len(args) > 4 else kwargs.get("tta"))
        return predict_batch(*args, **kwargs)

    monkeypatch.setattr(client_predict, "predict_batch", spy)
    predict(capsys, model, "--sex", "M", tmp_path / "hand.png")
    _, (averaged,), _ = predict(capsys, with_tta, "--sex", "M", tmp_path / "hand.png")
    assert [bool(t and t.enabled) for t in seen] == [False, True] and seen[1] == tta
    _, tensor = model_input(read_image(tmp_path / "hand.png"), 48)
    expected = predict_batch(loaded.model, tensor.unsqueeze(0), torch.ones(1), torch.device("cpu"), tta)
    assert averaged["bone_age_months"] == pytest.approx(float(expected.expected_months[0]), abs=0.06)
