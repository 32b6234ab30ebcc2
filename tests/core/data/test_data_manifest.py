"""load_manifest: declared columns and units, per-row skips with reasons, whole-file errors."""

from __future__ import annotations

import pytest
from data_sites import SiteBuilder

from core.data import DataError, SiteDataConfig, load_manifest
from core.data.manifest import AGE_NOT_NUMBER, AGE_OUT_OF_RANGE, EMPTY_ID, NO_IMAGE, UNKNOWN_SEX


def reasons(manifest) -> dict[str, str]:
    return {s.image_id: s.reason for s in manifest.skipped}


def test_clean_site_loads_every_row_with_summary(png_site: SiteBuilder) -> None:
    manifest = load_manifest(SiteDataConfig(png_site.root))
    assert len(manifest.records) == 40 and manifest.skipped == []
    first = manifest.records[0]
    assert (first.image_id, first.age_months, first.male) == ("1000", 0.0, True)
    assert first.path == png_site.images / "1000.png"
    summary = manifest.summary()
    assert summary["n_rows"] == summary["n_usable"] == 40
    assert (summary["n_male"], summary["n_female"]) == (20, 20)
    assert (summary["age_min_months"], summary["age_max_months"]) == (0.0, 234.0)
    assert sum(summary["age_histogram_years"].values()) == 40
    assert summary["age_histogram_years"][0] == 2  # 0 and 6 months


def test_missing_csv_names_the_file(site: SiteBuilder) -> None:
    with pytest.raises(DataError, match="manifest not found: .*labels.csv"):
        load_manifest(SiteDataConfig(site.root))


def test_missing_image_folder(site: SiteBuilder) -> None:
    site.csv([(1, 10, True)])
    with pytest.raises(DataError, match="image folder not found"):
        load_manifest(SiteDataConfig(site.root, image_dir="scans"))


@pytest.mark.parametrize("content", ["", "id,boneage,male\n"])
def test_empty_csv_is_an_error(site: SiteBuilder, content: str) -> None:
    (site.root / "labels.csv").write_text(content)
    with pytest.raises(DataError, match="labels.csv"):
        load_manifest(SiteDataConfig(site.root))


def test_missing_column_lists_columns_found_on_one_line(site: SiteBuilder) -> None:
    site.image("1")
    site.csv([(1, 10, True)], header="id,age,male")
    with pytest.raises(DataError) as info:
        load_manifest(SiteDataConfig(site.root))
    message = str(info.value)
    assert "\n" not in message
    assert "labels.csv" in message and "'boneage'" in message and "id, age, male" in message


def test_declared_column_names_fix_a_different_header(site: SiteBuilder) -> None:
    site.image("a")
    site.csv([("a", 10, "F")], header="patient,age_y,sex")
    config = SiteDataConfig(site.root, id_column="patient", age_column="age_y", sex_column="sex",
                            label_unit="years")
    (record,) = load_manifest(config).records
    assert (record.image_id, record.age_months, record.male) == ("a", 120.0, False)


def test_absolute_csv_path_outside_root(site: SiteBuilder, tmp_path) -> None:
    site.image("a")
    csv = tmp_path / "elsewhere.csv"
    csv.write_text("id,boneage,male\na,12,1\n")
    assert len(load_manifest(SiteDataConfig(site.root, csv_name=str(csv))).records) == 1


def test_unknown_unit_is_rejected() -> None:
    with pytest.raises(DataError, match="unknown label unit 'weeks'"):
        SiteDataConfig("x", label_unit="weeks")


def test_years_are_converted_and_range_checked_in_months(site: SiteBuilder) -> None:
    for image_id in "abc":
        site.image(image_id)
    site.csv([("a", 10, 1), ("b", 20, 1), ("c", 21, 1)])
    manifest = load_manifest(SiteDataConfig(site.root, label_unit="years"))
    assert [(r.image_id, r.age_months) for r in manifest.records] == [("a", 120.0), ("b", 240.0)]
    assert reasons(manifest) == {"c": AGE_OUT_OF_RANGE}


def test_per_row_problems_are_skipped_with_reasons(site: SiteBuilder) -> None:
    for image_id in ["ok", "zero", "max", "neg", "old", "nan", "text", "sex", "blank"]:
        site.image(image_id)
    site.csv([
        ("ok", 100, "M"), ("zero", 0, "female"), ("max", 240, "TRUE"), ("neg", -1, 1), ("old", 241, 1),
        ("nan", "nan", 1), ("text", "ten", 1), ("sex", 50, "X"), ("blank", 50, ""),
        ("ghost", 50, 1), ("", 50, 1),
    ])
    manifest = load_manifest(SiteDataConfig(site.root))
    assert [r.image_id for r in manifest.records] == ["ok", "zero", "max"]
    assert reasons(manifest) == {
        "neg": AGE_OUT_OF_RANGE, "old": AGE_OUT_OF_RANGE, "nan": AGE_NOT_NUMBER, "text": AGE_NOT_NUMBER,
        "sex": UNKNOWN_SEX, "blank": UNKNOWN_SEX, "ghost": NO_IMAGE, "": EMPTY_ID,
    }
    summary = manifest.summary()
    assert summary["n_rows"] == 11 and summary["n_skipped"] == 8
    assert summary["skipped_by_reason"] == {AGE_OUT_OF_RANGE: 2, AGE_NOT_NUMBER: 2, UNKNOWN_SEX: 2,
                                            NO_IMAGE: 1, EMPTY_ID: 1}


@pytest.mark.parametrize(("value", "male"), [
    ("True", True), ("false", False), ("1", True), ("0", False), ("m", True), ("F", False),
    ("Male", True), ("FEMALE", False),
])
def test_accepted_sex_values(site: SiteBuilder, value: str, male: bool) -> None:
    site.image("a")
    site.csv([("a", 12, value)])
    assert load_manifest(SiteDataConfig(site.root)).records[0].male is male


def test_duplicate_ids_are_an_error_naming_them(site: SiteBuilder) -> None:
    site.image("a")
    site.image("b")
    site.csv([("a", 10, 1), ("b", 20, 0), ("a", 30, 1)])
    with pytest.raises(DataError, match=r"1 duplicate id\(s\).*'a'"):
        load_manifest(SiteDataConfig(site.root))


def test_extension_order_and_unlabelled_images(site: SiteBuilder) -> None:
    site.image("a", "jpeg")
    site.image("a", "png8")
    site.image("b", "dicom2")
    site.image("extra", "png8")
    site.raw("notes.txt", b"not an image")
    site.csv([("a", 10, 1), ("b", 20, 0)])
    manifest = load_manifest(SiteDataConfig(site.root))
    assert [r.path.name for r in manifest.records] == ["a.png", "b.dcm"]
    assert manifest.summary()["n_images_without_label"] == 1


def test_ids_stay_strings(site: SiteBuilder) -> None:
    site.image("0042")
    site.csv([("0042", 10, 1)])
    assert load_manifest(SiteDataConfig(site.root)).records[0].image_id == "0042"
