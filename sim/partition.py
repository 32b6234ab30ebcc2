"""`python -m sim partition`: cut one RSNA-format dataset into N shifted hospital folders in the RSNA layout.

Deterministic for a seed: the source records are sorted by id and shuffled once; each site in turn takes the
first images of the shuffled pool that fit its population shift (age window, share of girls, size), so every
source image lands in at most one site. `--source N` also writes N further unshifted images (disjoint from the
sites) for pretraining. Each site folder holds `labels.csv`, `images/<id>.png`, `truth.csv` (the source label),
`site.json` (the declared shift and what was applied) and `montage.png` (source above, site below). The input
folder is only read. Profiles are in `sim.shifts` and docs/phantom.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import shutil
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from core.cli import add_data_arguments, add_shared_options, data_config_from_args
from core.data import DataError, ImageError, Record, SiteDataConfig, load_manifest, read_image
from core.errors import ConfigError
from sim.shifts import PARTITION_PROFILES, SiteShift, acquire, relabel, site_shifts

logger = logging.getLogger("ossifl.sim")
MONTAGE_IMAGES = 8


class PartitionError(ConfigError):
    """A partition that cannot be made (bad request or too few images), in one line."""


def assign(records: list[Record], shifts: list[SiteShift], seed: int,
           source_n: int = 0) -> tuple[list[list[Record]], list[Record]]:
    """Disjoint image sets per site (and for the source), deterministic for `seed`."""
    ordered = sorted(records, key=lambda r: r.image_id)
    rng = np.random.default_rng(seed)
    pool = [ordered[i] for i in rng.permutation(len(ordered))]
    taken: set[str] = set()
    chosen: list[list[Record]] = []
    for index, shift in enumerate(shifts):
        pop = shift.population
        lo, hi = pop.age_range_months
        free = [r for r in pool if r.image_id not in taken and lo <= r.age_months <= hi]
        if pop.female_fraction is None:
            picked = free[:pop.size]
        else:
            girls = int(round(pop.size * pop.female_fraction))
            picked = [r for r in free if not r.male][:girls] + [r for r in free if r.male][:pop.size - girls]
        if len(picked) < pop.size:
            raise PartitionError(f"site {index + 1} ({shift.name}) needs {pop.size} images aged {lo:g}-{hi:g} "
                                 f"months, only {len(picked)} fit among the images left")
        picked.sort(key=lambda r: r.image_id)
        chosen.append(picked)
        taken.update(r.image_id for r in picked)
    rest = [r for r in pool if r.image_id not in taken]
    if source_n > len(rest):
        raise PartitionError(f"--source {source_n} asks for more images than the {len(rest)} left after the sites")
    return chosen, sorted(rest[:source_n], key=lambda r: r.image_id)


def _image_rng(seed: int, site_index: int, image_id: str) -> np.random.Generator:
    return np.random.default_rng([seed, site_index, zlib.crc32(image_id.encode("utf-8"))])


def _write_png(path: Path, image: np.ndarray) -> None:
    Image.fromarray(np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8), mode="L").save(path)


def _montage(pairs: list[tuple[np.ndarray, np.ndarray]], path: Path, side: int = 96) -> None:
    """Source images in the top row, the same images as the site has them below."""
    def tile(image: np.ndarray) -> np.ndarray:
        picture = Image.fromarray(np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8), mode="L")
        return np.pad(np.asarray(picture.resize((side, side), Image.Resampling.BILINEAR)), 2, constant_values=255)
    rows = [np.concatenate([tile(p[k]) for p in pairs], axis=1) for k in (0, 1)]
    Image.fromarray(np.concatenate(rows, axis=0), mode="L").save(path)


def write_site(folder: Path, records: list[Record], shift: SiteShift, site_index: int, seed: int,
               provenance: dict) -> dict:
    """Write one shifted site; returns its site.json content."""
    (folder / "images").mkdir(parents=True)
    labels_rng = np.random.default_rng([seed, site_index, 1])
    rows, truth, pairs, applied, skipped = [], [], [], {"mirrored": 0, "inverted": 0, "collimated": 0, "marker": 0}, []
    for record in tqdm(records, desc=f"site {site_index} {shift.name}", unit="img", leave=False):
        try:
            source = read_image(record.path)
        except ImageError as exc:
            skipped.append({"id": record.image_id, "reason": exc.reason})
            continue
        image, done = acquire(source, shift.acquisition, _image_rng(seed, site_index, record.image_id))
        _write_png(folder / "images" / f"{record.image_id}.png", image)
        applied.update({k: applied[k] + int(done[k]) for k in applied})
        label = relabel(record.age_months, shift.labelling, labels_rng)
        rows.append((record.image_id, f"{label:g}", str(record.male)))
        truth.append((record.image_id, f"{record.age_months:g}"))
        if len(pairs) < MONTAGE_IMAGES:
            pairs.append((source, image))
    _write_csv(folder / "labels.csv", ("id", "boneage", "male"), rows)
    _write_csv(folder / "truth.csv", ("id", "source_boneage_months"), truth)
    if pairs:
        _montage(pairs, folder / "montage.png")
    ages = np.array([r.age_months for r in records])
    info = {"label_unit": shift.labelling.unit, "n": len(rows), "site_index": site_index, "shift": shift.to_dict(),
            "n_female": sum(not r.male for r in records), "source_age_months": {
                "min": float(ages.min()), "mean": round(float(ages.mean()), 2), "max": float(ages.max())},
            "applied": applied, "skipped": skipped, "partition": provenance}
    (folder / "site.json").write_text(json.dumps(info, indent=2))
    return info


def _write_csv(path: Path, header: tuple[str, ...], rows: list[tuple]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def partition(data: SiteDataConfig, n_sites: int, out: Path, profile: str = "hospitals", seed: int = 0,
              size: int | None = None, source_n: int = 0) -> list[Path]:
    """Write `n_sites` shifted sites (and an unshifted source folder when `source_n` > 0) under `out`."""
    if n_sites < 1:
        raise PartitionError("--sites must be at least 1")
    if size is not None and size < 1:
        raise PartitionError("--per-site must be at least 1")
    if out.exists() and any(out.iterdir()):
        raise PartitionError(f"output folder {out} is not empty; choose a new one")
    if data.root.resolve() == out.resolve() or data.root.resolve() in out.resolve().parents:
        raise PartitionError("the output folder must not be inside the input folder (it is never modified)")
    shifts = site_shifts(profile, n_sites, size)
    manifest = load_manifest(data)
    if not manifest.records:
        raise DataError(f"{data.root}: no usable labelled images")
    try:
        chosen, source = assign(manifest.records, shifts, seed, source_n)
    except PartitionError as exc:
        fits = largest_fitting_size(manifest.records, profile, n_sites, seed, source_n)
        if size is not None or fits == 0:
            hint = f"ask for fewer with --per-site (at most {fits} fit)" if fits else "give more images or fewer --sites"
            raise PartitionError(f"{exc}; {hint}") from None
        logger.warning("the %s profile's default sizes do not fit %d images: %d images per site instead (%s)",
                       profile, len(manifest.records), fits, exc)
        shifts = site_shifts(profile, n_sites, fits)
        chosen, source = assign(manifest.records, shifts, seed, source_n)
    provenance = {"source": str(data.root.resolve()), "profile": profile, "seed": seed, "sites": n_sites,
                  "source_records": len(manifest.records), "source_skipped": len(manifest.skipped)}
    out.mkdir(parents=True, exist_ok=True)
    folders = []
    for index, (shift, records) in enumerate(zip(shifts, chosen), start=1):
        folder = out / f"site-{index}_{shift.name}"
        info = write_site(folder, records, shift, index, seed, provenance)
        logger.info("%s: %d images (%d girls), ages %.0f-%.0f months, labels in %s, applied %s", folder.name,
                    info["n"], info["n_female"], info["source_age_months"]["min"], info["source_age_months"]["max"],
                    info["label_unit"], info["applied"])
        folders.append(folder)
    if source:
        folder = out / "source"
        (folder / "images").mkdir(parents=True)
        for record in source:
            shutil.copyfile(record.path, folder / "images" / record.path.name)
        _write_csv(folder / "labels.csv", ("id", "boneage", "male"),
                   [(r.image_id, f"{r.age_months:g}", str(r.male)) for r in source])
        (folder / "site.json").write_text(json.dumps({"label_unit": "months", "n": len(source), "shift": None,
                                                      "partition": provenance}, indent=2))
        logger.info("source: %d unshifted images for pretraining", len(source))
        folders.append(folder)
    return folders


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `partition` on `python -m sim`."""
    parser = subparsers.add_parser(
        "partition", help="cut one RSNA-format dataset into N shifted hospital folders",
        description=f"Profiles: {', '.join(PARTITION_PROFILES)}. Writes site-K_NAME/ folders in the RSNA layout.")
    add_data_arguments(parser)
    parser.add_argument("--sites", type=int, required=True, help="number of hospital sites")
    parser.add_argument("--out", type=Path, required=True, help="output folder (new or empty)")
    parser.add_argument("--profile", default="hospitals", help=f"one of {', '.join(PARTITION_PROFILES)}")
    add_shared_options(parser, "seed")
    parser.add_argument("--per-site", "--size", dest="size", type=int, default=None,
                        help="images per site (default: the profile's sizes; --size is the old, deprecated name)")
    parser.add_argument("--source-images", "--source", dest="source", type=int, default=0,
                        help="also write this many unshifted images, disjoint from the sites, to OUT/source "
                             "(--source is the old, deprecated name: in `python -m sim` --source is a folder)")
    parser.set_defaults(handler=run_partition)
    return parser


def largest_fitting_size(records: list[Record], profile: str, n_sites: int, seed: int, source_n: int) -> int:
    """The most images per site that `assign` can give every site (0 when not even one fits)."""
    low, high = 0, len(records) // max(n_sites, 1)
    while low < high:  # the largest size that fits; fitting is monotone in the size
        middle = (low + high + 1) // 2
        try:
            assign(records, site_shifts(profile, n_sites, middle), seed, source_n)
            low = middle
        except PartitionError:
            high = middle - 1
    return low


def run_partition(args: argparse.Namespace) -> int:
    folders = partition(data_config_from_args(args), args.sites, args.out, args.profile, args.seed, args.size,
                        args.source)
    print("\n".join(str(f) for f in folders))
    return 0
