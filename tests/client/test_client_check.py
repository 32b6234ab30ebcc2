"""`python -m client check`: what a hospital sees before joining a federation."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from client.__main__ import main
from sim.phantom.writer import generate_site

FAST = ["--image-size", "48", "--width", "0.25", "--batch-size", "4", "--steps", "1", "--device", "cpu"]


def folder_digest(root: Path) -> dict[str, tuple[str, int]]:
    """SHA-256 and modification time of every file below `root`."""
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def run_check(site: Path, capsys: pytest.CaptureFixture, *extra: str) -> tuple[int, str, str]:
    code = main(["check", "--data", str(site), *FAST, "--contact-sheet", str(site.parent / "sheet.png"), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_site("rsna", 24, tmp_path_factory.mktemp("phantom") / "site", seed=3, image_size=48)


@pytest.fixture
def site(phantom: Path, tmp_path: Path) -> Path:
    """A fresh copy of the 24-image phantom site that a test may damage."""
    copy = tmp_path / "site"
    for path in phantom.rglob("*"):
        if path.is_file():
            target = copy / path.relative_to(phantom)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    return copy


def test_good_site_is_usable_with_counts_and_timing(site: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run_check(site, capsys, "--json")
    assert code == 0
    report = json.loads(out)
    assert report["usable"] is True
    assert report["summary"]["n_rows"] == report["summary"]["n_usable"] == 24
    assert report["summary"]["n_male"] + report["summary"]["n_female"] == 24
    assert sum(report["split_sizes"].values()) == 24
    assert sum(report["summary"]["age_histogram_years"].values()) == 24
    assert report["skipped"] == []
    assert report["step_seconds"] > 0 and report["round_seconds"] > 0
    assert report["steps_per_epoch"] == max(1, report["split_sizes"]["train"] // 4)


def test_text_report_names_counts_and_estimate(site: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run_check(site, capsys)
    assert code == 0
    assert "24 usable, 0 skipped" in out
    assert "training step" in out and "per round" in out
    assert out.rstrip().endswith("usable")


def test_corrupt_image_and_bad_row_are_skipped_with_reasons(site: Path, capsys: pytest.CaptureFixture) -> None:
    (site / "images" / "3.png").write_bytes(b"not a png at all")
    with open(site / "labels.csv", "a", encoding="utf-8") as handle:
        handle.write("99,eleven,True\n")
    code, out, _ = run_check(site, capsys, "--json")
    assert code == 0
    report = json.loads(out)
    assert report["summary"]["n_usable"] == 23
    assert report["summary"]["skipped_by_reason"] == {"age not a number": 1, "unreadable image": 1}
    reasons = {skip["id"]: skip["reason"] for skip in report["skipped"]}
    assert reasons == {"99": "age not a number", "3": "unreadable image"}

    code, out, _ = run_check(site, capsys)
    assert code == 0
    assert "3: unreadable image" in out and "99: age not a number ('eleven')" in out


def test_missing_column_exits_2_with_one_line(site: Path, capsys: pytest.CaptureFixture) -> None:
    lines = (site / "labels.csv").read_text(encoding="utf-8").splitlines()
    (site / "labels.csv").write_text("\n".join(",".join(line.split(",")[:2]) for line in lines) + "\n")
    code, out, err = run_check(site, capsys)
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("error: ") and "missing sex column 'male'" in err


def test_no_usable_image_exits_2(site: Path, capsys: pytest.CaptureFixture) -> None:
    for image in (site / "images").iterdir():
        image.write_bytes(b"")
    code, _, err = run_check(site, capsys)
    assert code == 2
    assert err.startswith("error: ") and "no usable images" in err and "24 empty image" in err


def test_check_leaves_every_file_untouched(site: Path, capsys: pytest.CaptureFixture) -> None:
    (site / "images" / "5.png").write_bytes(b"\x89PNG broken")
    before = folder_digest(site)
    assert run_check(site, capsys)[0] == 0
    assert run_check(site, capsys, "--json")[0] == 0
    assert folder_digest(site) == before


def _keep_rows(site: Path, keep: int) -> None:
    """Keep the first `keep` rows of the training split only (no validation or test image)."""
    from core.data.split import split_of

    header, *rows = (site / "labels.csv").read_text().splitlines()
    train = [row for row in rows if split_of(row.split(",")[0]) == "train"][:keep]
    (site / "labels.csv").write_text("\n".join([header, *train]) + "\n")


def test_a_site_without_validation_or_test_images_is_not_usable(site: Path, capsys: pytest.CaptureFixture) -> None:
    _keep_rows(site, 3)
    code, out, _ = run_check(site, capsys)
    assert code == 1
    assert "NOT usable: no validation or test images among the 3 usable" in out
    code, out, _ = run_check(site, capsys, "--json")
    assert code == 1 and json.loads(out)["usable"] is False


def test_months_declared_in_years_name_the_unit_as_the_likely_cause(site: Path, capsys: pytest.CaptureFixture) -> None:
    """The issue's case: 59 of 60 rows skipped, the one kept read 12 times too old, and 'usable'."""
    header, first, *rows = (site / "labels.csv").read_text().splitlines()
    kept = first.split(",")
    kept[1] = "12"  # 12 months, read as 12 years: the one row that stays in range
    (site / "labels.csv").write_text("\n".join([header, ",".join(kept), *rows]) + "\n")
    code, out, _ = run_check(site, capsys, "--label-unit", "years")
    assert code == 1
    assert "NOT usable" in out and "23 of 24 rows have an impossible age" in out
    assert "ages recorded in months but declared in years" in out
    (site / "labels.csv").write_text("\n".join([header, *rows]) + "\n")
    code, _, err = run_check(site, capsys, "--label-unit", "years")  # none left: the one-line error says why
    assert code == 2 and "no usable images" in err and "declared in years" in err


def test_the_contact_sheet_is_never_written_into_the_site_folder(site: Path, capsys: pytest.CaptureFixture,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    before = folder_digest(site)
    monkeypatch.chdir(site)  # the default ./check_contact_sheet.png would land in the site's data
    code = main(["check", "--data", ".", *FAST])
    out = capsys.readouterr().out
    assert code == 0 and "not written: the path is inside the site folder" in out
    assert folder_digest(site) == before


def test_a_zero_batch_size_is_one_line(site: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["check", "--data", str(site), *FAST[:-6], "--batch-size", "0", "--contact-sheet",
                 str(site.parent / "sheet.png")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --batch-size, --local-epochs and --steps must be at least 1")
