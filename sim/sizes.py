"""Site sizes: a site's training split cut down to N images, its validation and test splits untouched.

`python -m sim --site-sizes 25,50,100` (or `site_sizes = [...]` in the experiment file) repeats the whole
comparison once per size. For each size and seed every site gets a derived manifest under
`<out>/sites/size-N/seed-S/<site>/labels.csv` that lists the site's validation and test images and the first N of
its training images in an order drawn once per (seed, site), so the 25 images of size 25 are among the 50 of size
50 (nested). The split of an image depends on its id alone (`core.data.split`), so the derived site has exactly the
original test and validation images; the images themselves are read where they are (the site's folder is only
read). A site with fewer training images than N keeps all of them; the rows say how many it trained on.
"""

from __future__ import annotations

import csv
import logging
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np

from core.data import SiteDataConfig, load_manifest
from core.data.split import split_of
from sim.sites import PreparedSite

logger = logging.getLogger("ossifl.sim")


def training_order(site: PreparedSite, seed: int, site_index: int) -> list[str]:
    """The site's training ids in the order a sweep takes them (fixed per seed and site; every size a prefix)."""
    ids = sorted(r.image_id for r in load_manifest(site.data).records if split_of(r.image_id) == "train")
    rng = np.random.default_rng([seed, site_index, zlib.crc32(site.name.encode("utf-8"))])
    return [ids[k] for k in rng.permutation(len(ids))]


def training_count(site: PreparedSite) -> int:
    """Usable images in the site's training split."""
    return sum(split_of(r.image_id) == "train" for r in load_manifest(site.data).records)


def subsample_site(site: PreparedSite, size: int, seed: int, site_index: int, folder: Path) -> tuple[PreparedSite, int]:
    """The site with its training split cut to `size` images (all when it has fewer); and how many it kept."""
    order = training_order(site, seed, site_index)
    kept = set(order[:size])
    if len(order) < size:
        logger.warning("site %s has %d training images, fewer than the size %d: it keeps all of them", site.name,
                       len(order), size)
    data = site.data
    per_unit = data.months_per_unit
    folder.mkdir(parents=True, exist_ok=True)
    rows = [(r.image_id, repr(r.age_months / per_unit), str(r.male)) for r in load_manifest(data).records
            if split_of(r.image_id) != "train" or r.image_id in kept]
    with open(folder / "labels.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(("id", "boneage", "male"))
        writer.writerows(rows)
    declared = SiteDataConfig(root=folder, image_dir=str(data.image_path.resolve()), label_unit=data.label_unit)
    return replace(site, path=folder, declared=declared), len(kept)


def sized_sites(sites: list[PreparedSite], size: int, seed: int, root: Path) -> tuple[list[PreparedSite], dict[str, int]]:
    """Every site at `size` training images for one seed, written under `root`; and each site's training count."""
    result, counts = [], {}
    for index, site in enumerate(sites):
        sized, kept = subsample_site(site, size, seed, index, root / f"size-{size}" / f"seed-{seed}" / site.name)
        result.append(sized)
        counts[site.name] = kept
    return result, counts
