"""Preprocess a folder of radiographs into another: canonical 16-bit PNGs and a ``qc.csv``; the input is only read."""

from __future__ import annotations

import csv
import logging
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

from core.data.config import DataError
from core.data.images import ImageError, declares_polarity, read_image
from core.data.manifest import IMAGE_EXTENSIONS
from core.preprocess.landmarks import KEYPOINTS
from core.preprocess.pipeline import Preprocessor
from core.preprocess.review import QualityTally

logger = logging.getLogger(__name__)

KEYPOINT_COLUMNS = tuple(f"{name}_{axis}" for name in KEYPOINTS for axis in "xy")
QC_COLUMNS = ("id", "flags", "confidence", "refused", "bands", *KEYPOINT_COLUMNS)
MANIFEST = "labels.csv"


def image_folder(data: Path) -> Path:
    """``data/images`` when it exists (a site folder), else ``data`` itself."""
    data = Path(data)
    return data / "images" if (data / "images").is_dir() else data


def image_paths(data: Path) -> list[Path]:
    """The image files of a folder (or of its ``images/``), sorted; a folder without any is a DataError."""
    source = image_folder(data)
    if not source.is_dir():
        raise DataError(f"no image folder at {data}")
    paths = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise DataError(f"{source}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    return paths


def check_out(data: Path, out: Path) -> None:
    source, target = Path(data).resolve(), Path(out).resolve()
    if target == source or source in target.parents or target in source.parents:
        raise DataError(f"--out {out} must be outside the input folder {data} (and not contain it)")
    if target.exists() and any(target.iterdir()):
        raise DataError(f"--out {out} is not empty; choose a new folder")


def preprocess_folder(data: Path, out: Path, preprocessor: Preprocessor) -> QualityTally:
    """Write ``out/images/<id>.png`` (16-bit, canonical) for each usable image and ``out/qc.csv`` for every image.

    A site folder's ``labels.csv`` is copied unchanged, so ``out`` is a site folder too. Unreadable images and
    refused images get a row in qc.csv with the reason and no image. The ``bands`` column names the edge bands
    removed before the orientation model looked ("collimator", "padding", both joined by ";", or blank).
    """
    source = image_folder(data)
    paths = image_paths(data)
    check_out(data, out)
    (Path(out) / "images").mkdir(parents=True, exist_ok=True)
    tally = QualityTally()
    with open(Path(out) / "qc.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(QC_COLUMNS)
        for path in paths:
            try:
                image = read_image(path)
            except ImageError as exc:
                writer.writerow([path.stem, "", "0.000", f"{exc.reason} ({exc.detail})" if exc.detail else exc.reason,
                                 "", *[""] * len(KEYPOINT_COLUMNS)])
                continue
            start = time.perf_counter()
            result = preprocessor(image, declares_polarity(path))
            tally.add(path.stem, image, result, time.perf_counter() - start)
            points = {} if result.refused else result.keypoints  # blank when refused or without a localiser
            writer.writerow([path.stem, ";".join(result.flags), f"{result.confidence:.3f}", result.refused or "",
                             ";".join(result.bands), *[f"{points[name][axis]:.4f}" if name in points else ""
                               for name in KEYPOINTS for axis in (0, 1)]])
            if result.refused is None:
                pixels = np.rint(np.clip(result.image, 0.0, 1.0) * 65535.0).astype(np.uint16)
                Image.fromarray(pixels).save(Path(out) / "images" / f"{path.stem}.png")
    if (Path(data) / MANIFEST).is_file():
        shutil.copyfile(Path(data) / MANIFEST, Path(out) / MANIFEST)
    logger.info("preprocessed %d images of %s into %s: flags %s, refused %s", tally.n, source, out,
                dict(tally.flags), dict(tally.refused))
    return tally
