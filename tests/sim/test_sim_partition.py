"""`python -m sim partition`: deterministic, disjoint, the declared shifts applied, input untouched."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.data import SiteDataConfig, load_manifest, read_image
from sim.__main__ import main
from sim.partition import PartitionError, partition
from sim.shifts import AcquisitionShift, acquire

N_SOURCE = 80


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """80 RSNA-format images at 48 px, ages spread over 1-228 months, sexes alternating."""
    root = tmp_path_factory.mktemp("rsna")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for k in range(N_SOURCE):
        image = np.zeros((48, 48), dtype=np.uint8)
        image[8:40, 14:34] = 90 + rng.integers(0, 120, size=(32, 20))
        Image.fromarray(image, mode="L").save(root / "images" / f"{1000 + k}.png")
        rows.append((str(1000 + k), str(1 + (k * 227) // (N_SOURCE - 1)), str(k % 2 == 0)))
    with open(root / "labels.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([("id", "boneage", "male"), *rows])
    return root


def _digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


def _labels(folder: Path) -> dict[str, tuple[float, bool]]:
    with open(folder / "labels.csv", newline="") as handle:
        return {r["id"]: (float(r["boneage"]), r["male"] == "True") for r in csv.DictReader(handle)}


def test_partition_is_deterministic_disjoint_and_leaves_the_input_alone(source: Path, tmp_path: Path) -> None:
    before = _digest(source)
    first = partition(SiteDataConfig(root=source), 4, tmp_path / "a", seed=3, size=8, source_n=10)
    second = partition(SiteDataConfig(root=source), 4, tmp_path / "b", seed=3, size=8, source_n=10)
    assert _digest(source) == before
    assert [_digest(f) for f in first] == [_digest(f) for f in second]
    ids = [set(_labels(folder)) for folder in first]
    assert [len(s) for s in ids] == [8, 8, 8, 8, 10]
    assert len(set().union(*ids)) == sum(len(s) for s in ids)  # no image in two folders
    other = partition(SiteDataConfig(root=source), 4, tmp_path / "c", seed=4, size=8)
    assert [set(_labels(f)) for f in other] != ids[:4]


def test_declared_population_and_labelling_shifts(source: Path, tmp_path: Path) -> None:
    folders = partition(SiteDataConfig(root=source), 4, tmp_path / "p", seed=0, size=8)
    truth = {}
    for folder in folders:
        with open(folder / "truth.csv", newline="") as handle:
            truth.update({r["id"]: float(r["source_boneage_months"]) for r in csv.DictReader(handle)})
    young, adolescent, tongji, rural = folders
    assert all(truth[i] <= 120 for i in _labels(young))
    assert all(120 <= truth[i] <= 228 for i in _labels(adolescent))
    assert sum(not male for _, male in _labels(adolescent).values()) == round(8 * 0.65)
    info = json.loads((tongji / "site.json").read_text())
    assert info["label_unit"] == "years" and info["shift"]["labelling"]["unit"] == "years"
    assert all(age == round(truth[i] / 12) for i, (age, _) in _labels(tongji).items())
    # the site's own data contract reads it in years and gives months back
    manifest = load_manifest(SiteDataConfig(root=tongji, label_unit="years"))
    assert len(manifest.records) == 8 and all(r.age_months % 12 == 0 for r in manifest.records)
    offsets = [age - truth[i] for i, (age, _) in _labels(rural).items()]
    assert np.std(offsets) > 2.0  # the extra reader noise of the rural site
    assert (young / "montage.png").is_file()


def test_acquisition_shifts_change_images_as_declared() -> None:
    rng = np.random.default_rng(0)
    image = np.zeros((64, 64), dtype=np.float32)
    image[10:54, 20:44] = 0.7
    unchanged, done = acquire(image, AcquisitionShift(), rng)
    np.testing.assert_allclose(unchanged, image, atol=1e-6)
    assert not any(done[k] for k in ("mirrored", "inverted", "collimated", "marker"))
    inverted, done = acquire(image, AcquisitionShift(inverted_fraction=1.0), rng)
    assert done["inverted"] and np.allclose(inverted, 1.0 - image, atol=1e-6)
    mirrored, done = acquire(image[:, ::-1].copy() * 0 + np.linspace(0, 1, 64, dtype=np.float32), 
                             AcquisitionShift(mirror_fraction=1.0), rng)
    assert done["mirrored"] and mirrored[0, 0] > mirrored[0, -1]
    noisy, _ = acquire(image, AcquisitionShift(noise=0.05), rng)
    assert 0.005 < float(np.std(noisy - image)) < 0.1
    low_res, _ = acquire(image, AcquisitionShift(resolution=0.5, blur_px=1.0), rng)
    assert np.abs(np.diff(low_res, axis=1)).max() < np.abs(np.diff(image, axis=1)).max()
    dark, _ = acquire(image, AcquisitionShift(gain=0.5, gamma=2.0), rng)
    assert dark.max() == pytest.approx(0.35**2, abs=1e-5)
    marked, done = acquire(image, AcquisitionShift(marker_fraction=1.0), rng)
    assert done["marker"] and not np.allclose(marked, image)


def test_written_images_read_back_through_the_data_contract(source: Path, tmp_path: Path) -> None:
    folders = partition(SiteDataConfig(root=source), 1, tmp_path / "iid", profile="iid", seed=0, size=5)
    info = json.loads((folders[0] / "site.json").read_text())
    assert info["n"] == 5 and info["partition"]["profile"] == "iid"
    for image_id in _labels(folders[0]):
        original = read_image(source / "images" / f"{image_id}.png")
        np.testing.assert_allclose(read_image(folders[0] / "images" / f"{image_id}.png"), original, atol=1 / 255)


def test_cli_writes_sites_and_refuses_bad_requests(source: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli"
    assert main(["partition", "--data", str(source), "--sites", "2", "--size", "5", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["site-1_young_referral", "site-2_adolescent_clinic"]
    capsys.readouterr()
    assert main(["partition", "--data", str(source), "--sites", "2", "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["partition", "--data", str(source), "--sites", "2", "--size", "50",
                 "--out", str(tmp_path / "big")]) == 2
    err = capsys.readouterr().err
    assert "only" in err and "ask for fewer with --per-site (at most " in err
    # the profile's default sizes (300 a site) do not fit 80 images: the default fits the data instead
    assert main(["partition", "--data", str(source), "--sites", "2", "--out", str(tmp_path / "default")]) == 0
    sizes = [len(_labels(folder)) for folder in sorted((tmp_path / "default").glob("site-*"))]
    assert len(sizes) == 2 and all(0 < size <= 40 for size in sizes)
    assert main(["partition", "--data", str(source), "--sites", "2", "--profile", "nope",
                 "--out", str(tmp_path / "x")]) == 2
    assert "unknown partition profile" in capsys.readouterr().err
    assert main(["partition", "--data", str(tmp_path / "missing"), "--sites", "1", "--out", str(tmp_path / "y")]) == 2
    with pytest.raises(PartitionError, match="inside the input"):
        partition(SiteDataConfig(root=source), 1, source / "out")


def test_acquisition_profile_shifts_the_scanner_alone(source: Path, tmp_path: Path) -> None:
    from sim.shifts import HOSPITALS

    folders = partition(SiteDataConfig(root=source), 4, tmp_path / "acq", profile="acquisition", seed=0, size=12)
    assert [f.name for f in folders] == [f"site-{k + 1}_{s.name}_scanner" for k, s in enumerate(HOSPITALS)]
    source_labels = _labels(source)
    ages = []
    for folder, hospital in zip(folders, HOSPITALS):
        info = json.loads((folder / "site.json").read_text())
        assert info["label_unit"] == "months" and info["partition"]["profile"] == "acquisition"
        assert info["shift"]["acquisition"] == json.loads(json.dumps(hospital.to_dict()["acquisition"]))
        assert info["shift"]["population"]["age_range_months"] == [0.0, 240.0]
        labels = _labels(folder)
        assert labels == {i: source_labels[i] for i in labels}  # same labelling as the source: no offset, no noise
        ages += [age for age, _ in labels.values()]
        changed = [not np.allclose(read_image(folder / "images" / f"{i}.png"),
                                   read_image(source / "images" / f"{i}.png"), atol=2 / 255) for i in labels]
        assert all(changed)  # every image went through the site's scanner
    assert min(ages) < 60 and max(ages) > 180  # the whole population at every site, not an age window
