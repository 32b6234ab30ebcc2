"""The phantom generator on disk: determinism, label units, RSNA layout, side files, CLI errors."""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from core.data.config import SiteDataConfig
from core.data.images import read_image
from core.data.manifest import load_manifest
from core.errors import ConfigError
from sim.__main__ import main
from sim.generate import generate_site, run_generate
from sim.phantom.profiles import PRESETS
from sim.phantom.writer import KEYPOINT_COLUMNS

SIZE = 64


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def rsna(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_site("rsna", 12, tmp_path_factory.mktemp("rsna"), seed=3, image_size=SIZE)


def test_same_seed_gives_byte_identical_files(rsna: Path, tmp_path: Path) -> None:
    again = generate_site("rsna", 12, tmp_path / "again", seed=3, image_size=SIZE)
    assert _files(again) == _files(rsna)


def test_fewer_images_are_a_prefix_of_more(rsna: Path, tmp_path: Path) -> None:
    small = generate_site("rsna", 5, tmp_path / "small", seed=3, image_size=SIZE)
    for name in ("labels.csv", "truth.csv", "keypoints.csv"):
        assert _rows(small / name) == _rows(rsna / name)[:5]
    for i in range(1, 6):
        assert (small / "images" / f"{i}.png").read_bytes() == (rsna / "images" / f"{i}.png").read_bytes()


def test_other_seed_gives_other_images(rsna: Path, tmp_path: Path) -> None:
    other = generate_site("rsna", 2, tmp_path / "other", seed=4, image_size=SIZE)
    assert (other / "images" / "1.png").read_bytes() != (rsna / "images" / "1.png").read_bytes()


def test_rsna_layout_reads_with_the_core_loader(rsna: Path) -> None:
    labels = _rows(rsna / "labels.csv")
    assert list(labels[0]) == ["id", "boneage", "male"]
    assert [r["id"] for r in labels] == [str(i) for i in range(1, 13)]
    assert all(r["male"] in ("True", "False") for r in labels)
    assert all(float(r["boneage"]).is_integer() and 0 <= float(r["boneage"]) <= 228 for r in labels)
    manifest = load_manifest(SiteDataConfig(rsna))
    assert len(manifest.records) == 12 and not manifest.skipped
    image = read_image(manifest.records[0].path)
    assert image.shape == (SIZE, SIZE)
    with Image.open(rsna / "images" / "1.png") as png:
        assert png.mode == "L"
    site = json.loads((rsna / "site.json").read_text())
    assert (site["preset"], site["label_unit"], site["seed"], site["n"]) == ("rsna", "months", 3, 12)


def test_truth_holds_true_bone_age_and_age_in_months(rsna: Path) -> None:
    truth = _rows(rsna / "truth.csv")
    labels = _rows(rsna / "labels.csv")
    assert list(truth[0]) == ["id", "true_boneage_months", "age_months", "male"]
    errors = [float(t["true_boneage_months"]) - float(r["boneage"]) for t, r in zip(truth, labels)]
    assert 0.0 < np.abs(errors).mean() < 30.0  # reader noise and heaping, not a different quantity
    assert [t["male"] for t in truth] == [r["male"] for r in labels]


def test_year_site_writes_whole_years_in_16_bit_dicom(tmp_path: Path) -> None:
    out = generate_site("tongji", 10, tmp_path / "tj", seed=1, image_size=SIZE)
    assert json.loads((out / "site.json").read_text())["label_unit"] == "years"
    years = [r["boneage"] for r in _rows(out / "labels.csv")]
    assert all(y.isdigit() and 0 <= int(y) <= 22 for y in years)
    ds = pydicom.dcmread(out / "images" / "1.dcm")
    assert (ds.BitsAllocated, ds.Rows, ds.Columns, ds.PhotometricInterpretation) == (16, SIZE, SIZE, "MONOCHROME2")
    assert ds.pixel_array.max() > 255
    manifest = load_manifest(SiteDataConfig(out, label_unit="years"))
    assert {r.age_months % 12 for r in manifest.records} == {0.0}


def test_inverted_dicom_is_monochrome1_and_decodes_bone_bright(tmp_path: Path) -> None:
    base = PRESETS["eu_clinic"]
    profile = replace(base, scanner=replace(base.scanner, inverted_fraction=0.5),
                      acquisition=replace(base.acquisition, collimation_fraction=0.0, marker_fraction=0.0))
    out = generate_site(profile, 16, tmp_path / "eu", seed=2, image_size=SIZE)
    kinds = {pydicom.dcmread(p).PhotometricInterpretation for p in (out / "images").glob("*.dcm")}
    assert kinds == {"MONOCHROME1", "MONOCHROME2"}
    for path in (out / "images").glob("*.dcm"):
        image = read_image(path)
        mask = np.asarray(Image.open(out / "masks" / path.with_suffix(".png").name)) > 0
        assert image[mask].mean() > image[~mask].mean()  # hand brighter than background once decoded


def test_sixteen_bit_png_site(tmp_path: Path) -> None:
    out = generate_site("peds_referral", 3, tmp_path / "peds", seed=0, image_size=SIZE)
    with Image.open(out / "images" / "1.png") as png:
        assert png.mode.startswith("I;16")


def test_masks_and_keypoints_match_the_image(rsna: Path) -> None:
    keypoints = _rows(rsna / "keypoints.csv")
    assert list(keypoints[0]) == ["id", *KEYPOINT_COLUMNS]
    for row in keypoints:
        mask = np.asarray(Image.open(rsna / "masks" / f"{row['id']}.png"))
        assert mask.shape == (SIZE, SIZE) and mask.dtype == np.uint8
        assert set(np.unique(mask)) == {0, 255}
        points = np.array([float(row[c]) for c in KEYPOINT_COLUMNS]).reshape(3, 2)
        assert ((points >= 0) & (points <= SIZE - 1)).all()
        cols, rows = np.rint(points).astype(int).T
        assert (mask[rows, cols] == 255).all()


def _cli(argv: list[str]) -> int:
    return main(argv)


def test_cli_writes_a_site(tmp_path: Path) -> None:
    assert _cli(["generate", "--preset", "rural_cr", "--n", "3", "--out", str(tmp_path / "r"),
                 "--image-size", str(SIZE), "--seed", "5"]) == 0
    assert len(list((tmp_path / "r" / "images").glob("*.png"))) == 3


@pytest.mark.parametrize("argv", [["--preset", "nope", "--n", "2"], ["--preset", "rsna", "--n", "0"]])
def test_cli_rejects_bad_input_in_one_line(argv: list[str], tmp_path: Path, capsys) -> None:
    assert _cli(["generate", *argv, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err


def test_cli_refuses_a_non_empty_folder_without_overwrite(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("x")
    args = ["generate", "--preset", "rsna", "--n", "2", "--out", str(tmp_path), "--image-size", str(SIZE)]
    assert _cli(args) == 2
    assert _cli([*args, "--overwrite"]) == 0
    assert (tmp_path / "keep.txt").exists() and (tmp_path / "labels.csv").exists()
    with pytest.raises(ConfigError):
        run_generate(argparse.Namespace(preset="rsna", n=-1, out=tmp_path, seed=0, image_size=None, overwrite=True))
