"""Helpers writing tiny synthetic sites: 8/16-bit PNG, JPEG and DICOM images plus a CSV."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

DICOM_BITS = 12


def hand(seed: int = 0, height: int = 40, width: int = 32) -> np.ndarray:
    """A non-constant float image in [0, 1]: a bright blob on a gradient, with noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    blob = np.exp(-((y - 0.5) ** 2 + (x - 0.4) ** 2) * 20)
    return np.clip(0.2 * x + 0.7 * blob + 0.05 * rng.random((height, width)), 0, 1)


def write_image(path: Path, pixels: np.ndarray, fmt: str) -> Path:
    """Write ``pixels`` (float in [0, 1]) as png8, png16, jpeg, dicom2 or dicom1 (inverted storage)."""
    if fmt == "png8":
        Image.fromarray(np.rint(pixels * 255).astype(np.uint8)).save(path)
    elif fmt == "png16":
        Image.fromarray(np.rint(pixels * 65535).astype(np.uint16)).save(path)
    elif fmt == "jpeg":
        Image.fromarray(np.rint(pixels * 255).astype(np.uint8)).save(path, quality=95)
    elif fmt in ("dicom1", "dicom2"):
        write_dicom(path, pixels, "MONOCHROME1" if fmt == "dicom1" else "MONOCHROME2")
    else:
        raise ValueError(fmt)
    return path


def write_dicom(path: Path, pixels: np.ndarray, photometric: str, slope: float = 1.0,
                intercept: float = 0.0) -> Path:
    """Write a 12-bit DICOM; MONOCHROME1 stores inverted values so it should read back as ``pixels``."""
    top = 2**DICOM_BITS - 1
    stored = np.rint(pixels * top)
    if photometric == "MONOCHROME1":
        stored = top - stored
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.set_pixel_data(stored.astype(np.uint16), photometric, DICOM_BITS)
    if slope != 1.0 or intercept != 0.0:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.save_as(path, enforce_file_format=True)
    return path


class SiteBuilder:
    """Builds a site folder: ``root/labels.csv`` and ``root/images/<id>.<ext>``."""

    EXTENSIONS = {"png8": ".png", "png16": ".png", "jpeg": ".jpg", "dicom1": ".dcm", "dicom2": ".dcm"}

    def __init__(self, root: Path) -> None:
        self.root = root
        self.images = root / "images"
        self.images.mkdir(parents=True)

    def image(self, image_id: str, fmt: str = "png8", pixels: np.ndarray | None = None) -> Path:
        """Write one image and return its path."""
        pixels = hand(len(self.list_images())) if pixels is None else pixels
        return write_image(self.images / f"{image_id}{self.EXTENSIONS[fmt]}", pixels, fmt)

    def raw(self, name: str, content: bytes) -> Path:
        """Write arbitrary bytes into the image folder."""
        path = self.images / name
        path.write_bytes(content)
        return path

    def csv(self, rows: list[tuple], header: str = "id,boneage,male") -> Path:
        """Write the manifest."""
        lines = [header] + [",".join(str(v) for v in row) for row in rows]
        path = self.root / "labels.csv"
        path.write_text("\n".join(lines) + "\n")
        return path

    def list_images(self) -> list[Path]:
        return sorted(self.images.iterdir())
