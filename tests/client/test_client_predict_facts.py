"""Patient facts checked, every input a row: implausible or contradictory ages, a lone birth date, a symlink
loop, one bad worklist row among good ones."""

from __future__ import annotations

import json
import os
from datetime import date
from pathlib import Path

import pytest
from predict_helpers import radiograph, tagged_dicom, tiny_checkpoint

from client.__main__ import main
from tests.core.data.data_sites import write_image


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("facts") / "model.pt")


def _rows(capsys: pytest.CaptureFixture, model: Path, *inputs: object) -> tuple[int, list[dict]]:
    code = main(["predict", "--model", str(model), "--json", "--no-progress", *map(str, inputs)])
    return code, [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_an_implausible_dicom_age_is_flagged_and_never_used(tmp_path: Path, model: Path, capsys) -> None:
    path = tagged_dicom(tmp_path / "a.dcm", birth=None, study=None, age="999Y")  # 11,988 months
    _, (row,) = _rows(capsys, model, path)
    assert row["status"] == "ok" and row["chronological_age_months"] is None
    assert "implausible chronological age 11988 months (DICOM PatientAge): not used" in row["quality_flags"]


def test_an_age_that_contradicts_the_dates_is_flagged_and_not_used(tmp_path: Path, model: Path, capsys) -> None:
    path = tagged_dicom(tmp_path / "a.dcm", birth=date(2015, 3, 1), study=date(2025, 9, 1), age="003Y")
    worklist = tmp_path / "w.csv"
    worklist.write_text(f"path,birth_date,study_date,chronological_age\n{path.name},2014-01-10,2024-01-10,4\n")
    _, (row,) = _rows(capsys, model, path)
    assert row["chronological_age_months"] is None and "contradicts the dates" in row["quality_flags"]
    _, (row,) = _rows(capsys, model, worklist)
    assert row["chronological_age_months"] is None and "48 months (worklist) contradicts" in row["quality_flags"]


def test_a_birth_date_without_a_study_date_is_said_not_dropped(tmp_path: Path, model: Path, capsys) -> None:
    path = tagged_dicom(tmp_path / "a.dcm", birth=date(2015, 3, 1), study=None, age=None)
    _, (row,) = _rows(capsys, model, path)
    assert "birth date (DICOM PatientBirthDate) without a study date" in row["quality_flags"]


def test_a_symlink_loop_in_a_folder_gets_a_row_with_its_reason(tmp_path: Path, model: Path, capsys) -> None:
    folder = tmp_path / "day"
    folder.mkdir()
    write_image(folder / "good.png", radiograph(1), "png8")
    os.symlink(folder / "loop.png", folder / "loop.png")
    os.symlink(tmp_path / "gone.png", folder / "dangling.png")
    code, rows = _rows(capsys, model, "--sex", "F", folder)
    status = {Path(r["image"]).name: (r["status"], r["reason"]) for r in rows}
    assert code == 0 and set(status) == {"good.png", "loop.png", "dangling.png"}
    assert status["good.png"][0] == "ok"
    assert status["loop.png"][0] == "refused" and "symbolic links" in status["loop.png"][1]
    assert status["dangling.png"][0] == "refused"


def test_one_bad_worklist_row_is_refused_and_the_others_go_on(tmp_path: Path, model: Path, capsys) -> None:
    for name in ("a", "b", "c"):
        write_image(tmp_path / f"{name}.png", radiograph(len(name)), "png8")
    worklist = tmp_path / "w.csv"
    worklist.write_text("path,sex,birth_date,chronological_age\na.png,F,,7\nb.png,F,2020-13-45,\nc.png,Q,,\n")
    code, rows = _rows(capsys, model, worklist)
    assert code == 0 and [Path(r["image"]).name for r in rows] == ["a.png", "b.png", "c.png"]
    assert [r["status"] for r in rows] == ["ok", "refused", "refused"]
    assert "worklist w.csv line 3" in rows[1]["reason"] and "not a date" in rows[1]["reason"]
    assert "line 4" in rows[2]["reason"] and "sex" in rows[2]["reason"]


def test_an_exif_turned_jpeg_is_read_upright_and_flagged(tmp_path: Path, model: Path, capsys) -> None:
    import numpy as np
    from PIL import Image

    from core.data import read_image

    upright = (radiograph(4) * 255).astype(np.uint8)  # 80 x 64, taller than wide
    stored = np.ascontiguousarray(np.rot90(upright, k=-1))  # stored a quarter turn clockwise; orientation 8 undoes it
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.fromarray(stored).save(tmp_path / "turned.jpg", exif=exif, quality=95)
    seen = read_image(tmp_path / "turned.jpg")
    assert seen.shape == upright.shape  # honoured: the model sees the hand upright, not turned 90 degrees
    assert np.abs(seen - upright / 255.0).mean() < 0.03
    _, (row,) = _rows(capsys, model, "--sex", "F", tmp_path / "turned.jpg")
    assert row["status"] == "ok" and "EXIF orientation 8 applied" in row["quality_flags"]
