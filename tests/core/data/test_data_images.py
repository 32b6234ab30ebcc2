"""read_image: every supported format reads back the written pixels; bad files raise ImageError."""

from __future__ import annotations

import numpy as np
import pytest
from data_sites import SiteBuilder, hand, write_dicom

from core.data import DataError, ImageError, read_image
from core.data.images import CONSTANT, EMPTY, UNREADABLE


@pytest.mark.parametrize(("fmt", "tolerance"), [
    ("png8", 1 / 255), ("png16", 1e-4), ("jpeg", 0.05), ("dicom2", 1e-3), ("dicom1", 1e-3),
])
def test_formats_read_back_as_float_in_unit_range(site: SiteBuilder, fmt: str, tolerance: float) -> None:
    pixels = hand()
    image = read_image(site.image("a", fmt, pixels))
    assert image.dtype == np.float32 and image.shape == pixels.shape
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert np.abs(image - pixels).max() <= tolerance


def test_png16_keeps_more_than_8_bits(site: SiteBuilder) -> None:
    pixels = np.linspace(0.5, 0.5 + 200 / 65535, 40 * 32).reshape(40, 32)
    image = read_image(site.image("a", "png16", pixels))
    assert len(np.unique(image)) > 100


def test_monochrome1_is_inverted_to_match_monochrome2(site: SiteBuilder) -> None:
    pixels = hand()
    mono1 = read_image(site.image("one", "dicom1", pixels))
    mono2 = read_image(site.image("two", "dicom2", pixels))
    np.testing.assert_allclose(mono1, mono2, atol=1e-6)


def test_dicom_rescale_slope_and_intercept(site: SiteBuilder) -> None:
    pixels = hand()
    plain = read_image(write_dicom(site.images / "plain.dcm", pixels, "MONOCHROME2"))
    rescaled = read_image(write_dicom(site.images / "r.dcm", pixels, "MONOCHROME2", 2.0, -1024.0))
    np.testing.assert_allclose(rescaled, plain, atol=1e-6)


def test_dicom_without_extension_is_detected(site: SiteBuilder) -> None:
    path = write_dicom(site.images / "noext", hand(), "MONOCHROME2")
    assert read_image(path).shape == (40, 32)


@pytest.mark.parametrize(("content", "reason"), [
    (b"", EMPTY),
    (b"this is not an image at all" * 10, UNREADABLE),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, UNREADABLE),
])
def test_bad_files_raise_image_error_with_reason(site: SiteBuilder, content: bytes, reason: str) -> None:
    path = site.raw("bad.png", content)
    with pytest.raises(ImageError) as info:
        read_image(path)
    assert info.value.reason == reason
    assert isinstance(info.value, DataError)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_truncated_png_is_unreadable(site: SiteBuilder) -> None:
    good = site.image("good", "png8", hand(0, 200, 200)).read_bytes()
    with pytest.raises(ImageError) as info:
        read_image(site.raw("cut.png", good[: len(good) // 2]))
    assert info.value.reason == UNREADABLE


@pytest.mark.parametrize("fmt", ["png8", "png16", "dicom1"])
def test_constant_image_is_rejected(site: SiteBuilder, fmt: str) -> None:
    with pytest.raises(ImageError) as info:
        read_image(site.image("flat", fmt, np.full((20, 20), 0.3)))
    assert info.value.reason == CONSTANT


def test_a_dicom_declaring_a_huge_image_is_refused_before_decoding(tmp_path) -> None:
    """The issue's 1.5 MB compressed 20000 x 20000 DICOM decompressed to 4.7 GB; the header is checked first."""
    import pydicom

    path = write_dicom(tmp_path / "huge.dcm", np.full((40, 30), 0.5), "MONOCHROME2")
    ds = pydicom.dcmread(path)
    ds.Rows = ds.Columns = 20000
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageError, match="20000 x 20000 pixels declared, more than the") as info:
        read_image(path)
    assert info.value.reason == "unreadable image"
