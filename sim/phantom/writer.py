"""A simulated site on disk, in the RSNA layout that ``core.data`` reads unchanged.

``DIR/labels.csv`` (id,boneage,male) and ``DIR/images/<id>.png|.dcm``; ground truth beside it:
``DIR/truth.csv`` (true bone age and chronological age, months), ``DIR/keypoints.csv`` and
``DIR/masks/<id>.png``; ``DIR/site.json`` records the profile, seed and size. Ids are 1..n, the same
whatever n, so a larger dataset with the same seed starts with the smaller one.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from tqdm import tqdm

from core.errors import ConfigError
from sim.phantom.profiles import ScannerProfile, SiteProfile, get_preset
from sim.phantom.synth import Sample, synthesize

logger = logging.getLogger(__name__)

OUTPUT_FILES = ("labels.csv", "truth.csv", "keypoints.csv", "site.json")
OUTPUT_DIRS = ("images", "masks")
KEYPOINT_COLUMNS = ("third_tip_x", "third_tip_y", "thumb_tip_x", "thumb_tip_y", "capitate_x", "capitate_y")
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


class GenerateError(ConfigError):
    """Bad generation request (n, output folder), explained in one line."""


def _quantise(image: np.ndarray, bits: int, inverted: bool) -> np.ndarray:
    full = (1 << bits) - 1
    values = np.rint((1.0 - image if inverted else image) * full)
    return values.astype(np.uint8 if bits == 8 else np.uint16)


def _write_dicom(path: Path, pixels: np.ndarray, sample: Sample, scanner: ScannerProfile, uid_seed: str) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[uid_seed, "image"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CR_IMAGE_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[uid_seed, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[uid_seed, "series"])
    ds.Modality = "CR"
    ds.BodyPartExamined = "HAND"
    ds.PatientID = path.stem
    ds.PatientSex = "M" if sample.subject.male else "F"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if sample.inverted else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, scanner.bit_depth, scanner.bit_depth - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def _write_image(folder: Path, image_id: int, sample: Sample, profile: SiteProfile, seed: int) -> None:
    scanner = profile.scanner
    pixels = _quantise(sample.image, scanner.bit_depth, sample.inverted)
    if scanner.file_format == "dicom":
        _write_dicom(folder / f"{image_id}.dcm", pixels, sample, scanner, f"{profile.name}/{seed}/{image_id}")
    else:
        Image.fromarray(pixels).save(folder / f"{image_id}.png", compress_level=1)


def _prepare(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise GenerateError(f"output {out} exists and is not a folder")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise GenerateError(f"output folder {out} is not empty (pass --overwrite to replace a dataset)")
        for name in OUTPUT_DIRS:
            shutil.rmtree(out / name, ignore_errors=True)
        for name in OUTPUT_FILES:
            (out / name).unlink(missing_ok=True)
    for name in OUTPUT_DIRS:
        (out / name).mkdir(parents=True, exist_ok=True)


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def generate_site(preset: str | SiteProfile, n: int, out: Path, seed: int, image_size: int | None = None,
                  overwrite: bool = False) -> Path:
    """Write ``n`` phantom radiographs of a site, with labels and ground truth, into ``out``.

    Args:
        preset: a preset name (see ``profiles.PRESETS``) or a ``SiteProfile``.
        n: number of images (ids 1..n).
        out: output folder; created if missing, must be empty unless ``overwrite``.
        seed: image ``i`` depends only on (seed, i) and the profile.
        image_size: overrides the profile's square image side in pixels.
        overwrite: replace the phantom files of an existing dataset in ``out``.

    Returns:
        ``out``.

    Raises:
        ProfileError: unknown preset or invalid profile.
        GenerateError: ``n`` <= 0, or ``out`` is not empty and ``overwrite`` is False.
    """
    profile = get_preset(preset) if isinstance(preset, str) else preset
    if image_size is not None:
        profile = profile.with_image_size(image_size)
    if n <= 0:
        raise GenerateError(f"--n must be a positive number of images, got {n}")
    out = Path(out)
    _prepare(out, overwrite)
    labels, truth, keypoints = [], [], []
    for index in tqdm(range(n), desc=f"phantom {profile.name}", unit="img"):
        image_id = index + 1
        sample = synthesize(profile, seed, index)
        _write_image(out / "images", image_id, sample, profile, seed)
        Image.fromarray(sample.mask.astype(np.uint8) * 255).save(out / "masks" / f"{image_id}.png", compress_level=1)
        subject = sample.subject
        labels.append([image_id, sample.label, subject.male])
        truth.append([image_id, round(subject.bone_age_months, 2), round(subject.age_months, 2), subject.male])
        keypoints.append([image_id, *np.round(sample.keypoints.ravel(), 2).tolist()])
    _write_csv(out / "labels.csv", ["id", "boneage", "male"], labels)
    _write_csv(out / "truth.csv", ["id", "true_boneage_months", "age_months", "male"], truth)
    _write_csv(out / "keypoints.csv", ["id", *KEYPOINT_COLUMNS], keypoints)
    site = {"preset": profile.name, "label_unit": profile.labelling.unit, "seed": seed, "n": n,
            "image_size": profile.scanner.image_size, "file_format": profile.scanner.file_format,
            "description": profile.description, "profile": profile.to_dict()}
    (out / "site.json").write_text(json.dumps(site, indent=2) + "\n")
    logger.info("wrote %d %s images of site %r (labels in %s) to %s", n, profile.scanner.file_format,
                profile.name, profile.labelling.unit, out)
    return out
