"""Decode one radiograph into a 2-D float32 array in [0, 1], bone bright (MONOCHROME2).

Supports 8- and 16-bit PNG, JPEG and DICOM. Files are opened read-only and never written.
DICOM window centre/width is ignored: the full stored range (BitsStored) is used.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, ImageOps
from pydicom.errors import InvalidDicomError

from core.data.config import DataError

logger = logging.getLogger(__name__)

UNREADABLE = "unreadable image"
EMPTY = "empty image"
CONSTANT = "constant image"
TOO_SMALL = "image too small"
MIN_SIDE = 16  # pixels; a hand radiograph smaller than this on either side shows no bones to age

# Full-scale value of each single-channel Pillow mode.
_PIL_FULL_SCALE = {"L": 255.0, "I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I": 65535.0}


# What Pillow and pydicom raise on broken, truncated or unsupported files.
_DECODE_ERRORS = (
    OSError, ValueError, TypeError, AttributeError, KeyError, IndexError, RuntimeError,
    NotImplementedError, InvalidDicomError, Image.DecompressionBombError,
)


class ImageError(DataError):
    """An image that cannot be used; ``reason`` is one of the skip reasons above."""

    def __init__(self, path: Path, reason: str, detail: str = "") -> None:
        message = f"{path}: {reason}" + (f" ({detail})" if detail else "")
        super().__init__(message)
        self.reason = reason
        self.detail = detail


def read_image(path: Path) -> np.ndarray:
    """Read an image file as a 2-D float32 array in [0, 1], bone bright.

    Args:
        path: a PNG (8 or 16 bit), JPEG or DICOM file.

    Returns:
        Array of shape (H, W), dtype float32, values in [0, 1].

    Raises:
        ImageError: the file is unreadable, empty, smaller than MIN_SIDE a side or constant.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageError(path, EMPTY, "0-byte file")
        image = _read_dicom(path) if _is_dicom(path) else _read_pil(path)
    except ImageError:
        raise
    except _DECODE_ERRORS as exc:
        raise ImageError(path, UNREADABLE, f"{type(exc).__name__}: {exc}".splitlines()[0]) from exc
    if image.ndim != 2 or image.size == 0:
        raise ImageError(path, EMPTY, f"shape {image.shape}")
    if min(image.shape) < MIN_SIDE:
        raise ImageError(path, TOO_SMALL, f"{image.shape[1]}x{image.shape[0]} px; a radiograph needs at least "
                                          f"{MIN_SIDE} px a side")
    if image.max() == image.min():
        raise ImageError(path, CONSTANT, f"every pixel is {image.flat[0]:.3f}")
    return image


def declares_polarity(path: Path) -> bool:
    """Whether the file says which way round its grey levels are (a DICOM with PhotometricInterpretation
    MONOCHROME1 or MONOCHROME2): `read_image` has then made it bone bright, and no guess may invert it."""
    path = Path(path)
    if path.suffix.lower() in (".png", ".jpg", ".jpeg"):
        return False
    try:
        if not _is_dicom(path):
            return False
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PhotometricInterpretation"], force=True)
    except _DECODE_ERRORS:
        return False
    return str(ds.get("PhotometricInterpretation", "")).upper() in ("MONOCHROME1", "MONOCHROME2")


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    with path.open("rb") as f:
        return f.read(132)[128:132] == b"DICM"


EXIF_ORIENTATION_TAG = 0x0112  # 1 = as stored; 2-8 = mirrored and/or turned by the camera or the export


def exif_orientation(path: Path) -> int:
    """The EXIF orientation of a JPEG or PNG (1 when it has none, is not an image or cannot be read)."""
    try:
        with Image.open(path) as img:
            return int(img.getexif().get(EXIF_ORIENTATION_TAG, 1) or 1)
    except _DECODE_ERRORS:
        return 1


def exif_flag(path: Path) -> str:
    """The flag a reading carries when `read_image` turned the image as its EXIF orientation says ("" if not)."""
    orientation = exif_orientation(path)
    return "" if orientation in (1, 0) or orientation > 8 else (
        f"EXIF orientation {orientation} applied: the image was turned/mirrored as its header says before reading")


def _read_pil(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        img.load()
        if img.width == 0 or img.height == 0:
            raise ImageError(path, EMPTY, f"size {img.width}x{img.height}")
        img = ImageOps.exif_transpose(img)  # what a viewer shows: the camera's turn undone
        if img.mode not in _PIL_FULL_SCALE:
            img = img.convert("L")
        full_scale = _PIL_FULL_SCALE[img.mode]
        pixels = np.asarray(img).astype(np.float32)
    pixels *= 1.0 / full_scale
    return np.clip(pixels, 0.0, 1.0, out=pixels) if img.mode == "I" else pixels


def _read_dicom(path: Path) -> np.ndarray:
    ds = pydicom.dcmread(path, force=True)
    if "PixelData" not in ds:
        raise ImageError(path, EMPTY, "no PixelData element")
    declared = int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0) * int(ds.get("NumberOfFrames", 1) or 1)
    if declared * int(ds.get("SamplesPerPixel", 1) or 1) > (Image.MAX_IMAGE_PIXELS or math.inf):
        # checked before decoding: 1.5 MB of compressed DICOM can claim 20000 x 20000 pixels (4.7 GB as float64)
        raise ImageError(path, UNREADABLE, f"{ds.get('Rows')} x {ds.get('Columns')} pixels declared, more than the "
                                           f"{Image.MAX_IMAGE_PIXELS:,} any radiograph needs; not decoded")
    pixels = ds.pixel_array.astype(np.float64)
    samples = int(ds.get("SamplesPerPixel", 1))
    if samples > 1:  # colour DICOM (rare for radiographs): average the channels
        pixels = pixels.mean(axis=-1)
    if pixels.ndim == 3:
        raise ImageError(path, UNREADABLE, f"multi-frame DICOM with {pixels.shape[0]} frames")
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    low, high = (-(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1) if signed else (0.0, 2.0**bits - 1)
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    pixels = pixels * slope + intercept
    low, high = sorted((low * slope + intercept, high * slope + intercept))
    image = (pixels - low) / (high - low)
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        image = 1.0 - image
    if not np.isfinite(image).all():
        raise ImageError(path, UNREADABLE, "non-finite pixel values")
    return np.clip(image, 0.0, 1.0).astype(np.float32)
