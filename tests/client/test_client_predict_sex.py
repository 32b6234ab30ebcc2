"""`predict` with the sex not given: an unsure sex head gives the bone age under both sexes, never a coin flip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from predict_helpers import HALFWIDTH, radiograph, tiny_checkpoint

from client.__main__ import main
from client.reading import ReadingConfig
from core.checkpoint import load_checkpoint, save_checkpoint
from tests.core.data.data_sites import write_image


def with_sex_head(model: Path, out: Path, p_male: float) -> Path:
    """The same checkpoint with a sex head that answers `p_male` for every image."""
    loaded = load_checkpoint(model)
    head = loaded.model.block5.sex_head
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([0.0, float(torch.logit(torch.tensor(p_male)))]))
    return save_checkpoint(out, loaded.model, loaded.metadata)


def predict(capsys: pytest.CaptureFixture, model: Path, *args: object) -> list[dict]:
    assert main(["predict", "--model", str(model), "--json", "--no-progress", *map(str, args)]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("model") / "model.pt")


def test_an_unsure_sex_head_gives_both_sexes_with_their_intervals(tmp_path: Path, base: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    model = with_sex_head(base, tmp_path / "unsure.pt", 0.55)
    path = write_image(tmp_path / "x.png", radiograph(5), "png8")
    (row,) = predict(capsys, model, "--chronological-age", "9", path)
    (girl,) = predict(capsys, model, "--sex", "F", path)
    (boy,) = predict(capsys, model, "--sex", "M", path)
    assert row["status"] == "ok" and row["sex"] == "unknown" and row["sex_head_p_male"] == pytest.approx(0.55)
    assert row["bone_age_months"] is None and row["interval_low_months"] is None  # no single reading
    assert row["ba_minus_ca_months"] is None
    assert "unsure" in row["sex_source"] and "give the sex" in row["quality_flags"]
    for name, given in (("female", girl), ("male", boy)):
        assert row[f"bone_age_months_{name}"] == given["bone_age_months"]
        assert row[f"interval_low_months_{name}"] == given["interval_low_months"]
        assert row[f"interval_high_months_{name}"] == given["interval_high_months"]
        width = given["interval_high_months"] - given["interval_low_months"]
        assert width == pytest.approx(2 * HALFWIDTH, abs=0.2) or given["interval_low_months"] == 0.0
    assert row["bone_age"] == f"F {girl['bone_age']}, M {boy['bone_age']}"


def test_a_sure_sex_head_is_used_and_the_threshold_is_one_setting(tmp_path: Path, base: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    assert ReadingConfig().sex_sure == 0.8
    path = write_image(tmp_path / "x.png", radiograph(5), "png8")
    (sure,) = predict(capsys, with_sex_head(base, tmp_path / "sure.pt", 0.9), path)
    assert (sure["sex"], sure["bone_age_months_male"]) == ("M", None) and sure["bone_age_months"] is not None
    unsure = with_sex_head(base, tmp_path / "unsure.pt", 0.75)
    (row,) = predict(capsys, unsure, path)
    assert row["sex"] == "unknown"
    (lowered,) = predict(capsys, unsure, "--sex-sure", "0.7", path)
    assert lowered["sex"] == "M" and lowered["sex_source"].startswith("model's sex head")
    (given,) = predict(capsys, unsure, "--sex", "F", path)
    assert given["sex"] == "F" and given["bone_age_months_female"] is None  # a given sex needs no head


def test_the_report_asks_for_the_sex_and_shows_both_readings(tmp_path: Path, base: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    model = with_sex_head(base, tmp_path / "unsure.pt", 0.5)
    (tmp_path / "in").mkdir()
    path = write_image(tmp_path / "in" / "x.png", radiograph(5), "png8")
    (row,) = predict(capsys, model, "--report", "--chronological-age", "9", "--out", tmp_path / "out", path)
    text = Path(row["report"]).read_text()
    assert "Sex needed" in text and "Bone age if female" in text and "Bone age if male" in text
    assert f"F {row['bone_age'].split(', ')[0][2:]}" in text
    assert "Sex used</th><td>F" not in text and "Sex used</th><td>M" not in text
    assert text.count("90% prediction interval") == 2 and "BA - CA" in text
