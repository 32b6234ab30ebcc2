"""Throughput of the data layer: decode-once construction and per-item augmentation.

Usage:
    python -m bench.bench_data [--n 1000] [--size 128] [--src-size 512] [--format png8]
    python -m bench.bench_data --data /path/to/site     # a real site (RSNA layout)

A synthetic site is written in a temporary folder that is deleted afterwards. The last line compares decoding
a whole site with reading it back from the disk cache a deployed ClientApp keeps (`core.data.cache`).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from core.data import AugmentConfig, BoneAgeDataset, SiteDataConfig, load_manifest, make_loader
from core.data.cache import SiteDataCache

logger = logging.getLogger("bench_data")

EXTENSIONS = {"png8": ".png", "png16": ".png", "jpeg": ".jpg", "dicom": ".dcm"}


def synthetic_image(rng: np.random.Generator, side: int) -> np.ndarray:
    """A hand-sized bright blob on a dark gradient with noise, float in [0, 1], 4:3 portrait."""
    height, width = side, side * 3 // 4
    y, x = np.mgrid[0:height, 0:width] / side
    centre = rng.uniform(0.3, 0.5, size=2)
    blob = np.exp(-((y - centre[0]) ** 2 + (x - centre[1]) ** 2) * 12)
    return np.clip(0.1 + 0.1 * x + 0.7 * blob + 0.05 * rng.random((height, width)), 0, 1)


def write(path: Path, pixels: np.ndarray, fmt: str) -> None:
    """Write one image in ``fmt`` (png8, png16, jpeg or 12-bit MONOCHROME2 dicom)."""
    if fmt == "dicom":
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = SecondaryCaptureImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
        ds.set_pixel_data(np.rint(pixels * 4095).astype(np.uint16), "MONOCHROME2", 12)
        ds.save_as(path, enforce_file_format=True)
    elif fmt == "png16":
        Image.fromarray(np.rint(pixels * 65535).astype(np.uint16)).save(path, compress_level=1)
    else:
        Image.fromarray(np.rint(pixels * 255).astype(np.uint8)).save(path, quality=90, compress_level=1)


def make_site(root: Path, n: int, side: int, fmt: str) -> SiteDataConfig:
    """Write ``n`` synthetic images and their manifest under ``root``."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    rows = ["id,boneage,male"]
    for i in range(n):
        write(root / "images" / f"{i}{EXTENSIONS[fmt]}", synthetic_image(rng, side), fmt)
        rows.append(f"{i},{rng.integers(1, 229)},{bool(i % 2)}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return SiteDataConfig(root)


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:8.0f} img/s ({n} images, {seconds:.2f} s)"


def bench(config: SiteDataConfig, size: int, workers: int) -> None:
    """Log images/s of construction, of __getitem__ without and with augmentation, and of a loader."""
    records = load_manifest(config).records
    start = time.perf_counter()
    dataset = BoneAgeDataset(records, size, AugmentConfig(), seed=0)
    logger.info("decode once (construction): %s, %.0f MB held", rate(len(records), time.perf_counter() - start),
                dataset.images.nbytes / 1e6)
    plain = BoneAgeDataset(records[:200], size)
    for name, data in (("__getitem__ no augment  ", plain), ("__getitem__ with augment", dataset)):
        n = min(len(data), 2000)
        start = time.perf_counter()
        for i in range(n):
            data[i]
        logger.info("%s (1 process): %s", name, rate(n, time.perf_counter() - start))
    loader = make_loader(dataset, batch_size=64, shuffle=True, seed=0, num_workers=workers)
    start = time.perf_counter()
    n = sum(len(batch["age"]) for batch in loader)
    logger.info("make_loader, batch 64, %d worker(s): %s", workers, rate(n, time.perf_counter() - start))
    with tempfile.TemporaryDirectory(prefix="bench_decoded_") as disk:
        start = time.perf_counter()
        site = SiteDataCache().load(config, size, AugmentConfig(), seed=0, disk_dir=Path(disk))
        decoded = time.perf_counter() - start
        start = time.perf_counter()
        SiteDataCache().load(config, size, AugmentConfig(), seed=0, disk_dir=Path(disk))  # as a new process would
        stored = sum(p.stat().st_size for p in Path(disk).iterdir())
        logger.info("site decoded and written to the disk cache: %.2f s; read back by a fresh cache: %.2f s "
                    "(%.0fx faster, %.0f MB on disk, %d images)", decoded, time.perf_counter() - start,
                    decoded / (time.perf_counter() - start), stored / 1e6,
                    len(site.train) + len(site.val) + len(site.test))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="a real site folder instead of a synthetic one")
    parser.add_argument("--n", type=int, default=1000, help="synthetic images")
    parser.add_argument("--src-size", type=int, default=512, help="height of synthetic images in pixels")
    parser.add_argument("--format", choices=sorted(EXTENSIONS), default="png8")
    parser.add_argument("--image-size", "--size", dest="size", type=int, default=128, help="model input size")
    parser.add_argument("--workers", type=int, default=2, help="loader worker processes")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("core.data").setLevel(logging.WARNING)
    if args.data is not None:
        logger.info("site %s at %d px", args.data, args.size)
        bench(SiteDataConfig(args.data), args.size, args.workers)
        return
    with tempfile.TemporaryDirectory() as tmp:
        logger.info("synthetic site: %d %s images of %dx%d px, model input %d px", args.n, args.format,
                    args.src_size, args.src_size * 3 // 4, args.size)
        bench(make_site(Path(tmp), args.n, args.src_size, args.format), args.size, args.workers)


if __name__ == "__main__":
    main()
