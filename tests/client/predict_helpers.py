"""Shared set-up of the predict tests: a tiny TJ-Net checkpoint and images in every supported format."""

from __future__ import annotations

import hashlib
from datetime import date
from pathlib import Path

import numpy as np
import pydicom
import torch

from core.checkpoint import describe, save_checkpoint
from core.intervals.conformal import ConformalInterval
from core.model.config import TJNetConfig
from core.model.tjnet import TJNet
from tests.core.data.data_sites import hand, write_dicom, write_image

HALFWIDTH = 20.0
HALFWIDTH_FROM_HEAD = 31.0
FORMATS = {"png8": ".png", "png16": ".png", "jpeg": ".jpg", "dicom2": ".dcm"}


def tiny_checkpoint(path: Path, conformal: bool = True, **config: object) -> Path:
    """A seeded, untrained 48 px TJ-Net; its interval metadata is set by hand (calibration is tested apart)."""
    torch.manual_seed(0)
    model = TJNet(TJNetConfig(image_size=48, width=0.25, **config))
    extra = {}
    if conformal:
        extra["conformal"] = ConformalInterval(0.9, HALFWIDTH, HALFWIDTH_FROM_HEAD, 50, "val", "phantom").to_dict()
    return save_checkpoint(path, model, describe(model, **extra))


def radiograph(seed: int) -> np.ndarray:
    return hand(seed, height=80, width=64)


def write_all_formats(folder: Path, seed: int = 0) -> dict[str, Path]:
    """The same picture as 8-bit PNG, 16-bit PNG, JPEG and DICOM."""
    folder.mkdir(parents=True, exist_ok=True)
    return {fmt: write_image(folder / f"{fmt}{ext}", radiograph(seed), fmt) for fmt, ext in FORMATS.items()}


def tagged_dicom(path: Path, sex: str = "F", birth: date | None = date(2015, 3, 1),
                 study: date | None = date(2025, 9, 1), age: str | None = "011Y", patient_id: str = "P42",
                 acquisition: date | None = None) -> Path:
    """A DICOM with patient tags (None leaves a tag out)."""
    write_dicom(path, radiograph(3), "MONOCHROME2")
    ds = pydicom.dcmread(path)
    ds.PatientSex, ds.PatientID = sex, patient_id
    for tag, value in (("PatientBirthDate", birth), ("StudyDate", study), ("AcquisitionDate", acquisition)):
        if value is not None:
            setattr(ds, tag, value.strftime("%Y%m%d"))
    if age is not None:
        ds.PatientAge = age
    ds.save_as(path, enforce_file_format=True)
    return path


def tree_digest(root: Path) -> dict[str, tuple[str, int]]:
    """SHA-256 and modification time of every file below `root`."""
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}
