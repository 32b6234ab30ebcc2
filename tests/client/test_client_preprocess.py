"""`python -m client preprocess` and the preprocessing part of `python -m client check`."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import pytest
from PIL import Image

from client.__main__ import main
from sim.phantom.writer import generate_site


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = generate_site("rural_cr", 10, tmp_path_factory.mktemp("phantom") / "site", seed=4, image_size=96)
    Image.effect_noise((20, 20), 40).save(site / "images" / "tiny.png")  # a thumbnail: refused as too small
    return site


def test_preprocess_writes_canonical_images_and_qc_without_touching_the_input(phantom: Path, tmp_path: Path,
                                                                              capsys: pytest.CaptureFixture) -> None:
    before = _digest(phantom)
    out, sheet = tmp_path / "out", tmp_path / "sheet.png"
    assert main(["preprocess", "--data", str(phantom), "--out", str(out), "--contact-sheet", str(sheet)]) == 0
    assert _digest(phantom) == before
    with open(out / "qc.csv", newline="") as handle:
        rows = {row["id"]: row for row in csv.DictReader(handle)}
    assert len(rows) == 11 and list(next(iter(rows.values())))[:4] == ["id", "flags", "confidence", "refused"]
    assert all(row["wrist_x"] == row["mcp3_y"] == "" for row in rows.values())  # no localiser by default
    assert rows["tiny"]["flags"] == "too_small" and rows["tiny"]["refused"].startswith("too small")
    written = {p.stem for p in (out / "images").glob("*.png")}
    assert written == {i for i, row in rows.items() if not row["refused"]} and len(written) >= 8
    assert (out / "labels.csv").read_bytes() == (phantom / "labels.csv").read_bytes()
    assert Image.open(sheet).size[0] > 500 and "too small 1" in capsys.readouterr().out


@pytest.mark.parametrize("where", ["inside", "nonempty"])
def test_preprocess_refuses_an_output_folder_that_could_touch_the_input(phantom: Path, tmp_path: Path, where: str,
                                                                        capsys: pytest.CaptureFixture) -> None:
    out = phantom / "canonical" if where == "inside" else tmp_path
    (tmp_path / "something").write_text("x")
    assert main(["preprocess", "--data", str(phantom), "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("error: --out")
    assert not (phantom / "canonical").exists()


def test_check_reports_the_flags_and_writes_a_contact_sheet(phantom: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    sheet = tmp_path / "check.png"
    code = main(["check", "--data", str(phantom), "--image-size", "48", "--width", "0.25", "--batch-size", "4",
                 "--steps", "1", "--device", "cpu", "--contact-sheet", str(sheet)])
    out = capsys.readouterr().out
    assert code == 0 and sheet.is_file()
    assert "preprocessing" in out and "flags" in out and "(advisory" in out


def test_preprocess_refuses_an_orientation_model_that_disagrees_with_itself_on_the_folder(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import torch

    from core.preprocess.orientation import OrientationNet, save_orientation

    site = generate_site("rsna", 20, tmp_path / "site", seed=6, image_size=64)
    torch.manual_seed(0)
    untrained = save_orientation(tmp_path / "untrained.pt", OrientationNet(), {})  # names poses at random
    out = tmp_path / "out"
    spec = f"default,orientation_weights={untrained},site_fit=false"
    assert main(["preprocess", "--data", str(site), "--out", str(out), "--preprocess", spec]) == 2
    error = capsys.readouterr().err
    assert "does not agree with itself" in error and "python -m client train-orientation" in error
    assert not out.exists() or not any(out.iterdir())  # nothing written: the model was never applied
    assert main(["preprocess", "--data", str(site), "--out", str(out), "--json"]) == 0  # the packaged model passes
    assert '"agreement"' in capsys.readouterr().out
