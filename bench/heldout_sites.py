"""A larger held-out test set per partitioned site: a pretrained model's own test split, as each site would see it.

Usage:
    python -m bench.heldout_sites --source SOURCE --sites SITES --out HELDOUT [--per-site 300] [--seed 0]

A site of `sim partition` has 46-68 test images: too few for a paired interval to resolve half a month. This
takes the images of SOURCE (the unshifted folder the pretrained model was trained on) that fall in its test split
(`core.data.split.split_of`: never trained on, never used to pick an epoch) and writes, for each site folder under
SITES, up to `--per-site` of them (the site's age window and share of girls) through that site's acquisition and
labelling shifts (read from its site.json), as `HELDOUT/<site>`: a folder `bench.bench_feature_cache_site
--extra-test` scores every model on. Its ids all fall in the test split, so a site's test-split loader reads
them all. Nothing of SOURCE or SITES is modified.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from core.data import SiteDataConfig, load_manifest
from core.data.split import split_of
from sim.partition import write_site
from sim.shifts import site_shifts


def heldout_records(source: Path, age_range: tuple[float, float], female_fraction: float | None, size: int,
                    seed: int) -> list:
    """Up to `size` test-split records of `source` in the age window, with the site's share of girls."""
    records = [r for r in load_manifest(SiteDataConfig(root=source)).records
               if split_of(r.image_id) == "test" and age_range[0] <= r.age_months <= age_range[1]]
    records = [records[i] for i in np.random.default_rng(seed).permutation(len(records))]
    if female_fraction is None:
        return sorted(records[:size], key=lambda r: r.image_id)
    girls = [r for r in records if not r.male][:round(size * female_fraction)]
    boys = [r for r in records if r.male][:size - len(girls)]
    return sorted(girls + boys, key=lambda r: r.image_id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="the pretrained model's unshifted images")
    parser.add_argument("--sites", type=Path, required=True, help="the folder of `sim partition`'s sites")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--per-site", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    for folder in sorted(p for p in args.sites.iterdir() if (p / "site.json").is_file()):
        info = json.loads((folder / "site.json").read_text())
        if not info.get("shift"):
            continue  # the unshifted source folder
        profile, count = info["partition"]["profile"], info["partition"]["sites"]
        shift = site_shifts(profile, count, None)[info["site_index"] - 1]
        recorded = info["shift"]
        if any(shift.to_dict()[part] != recorded[part] for part in ("acquisition", "labelling")):
            raise SystemExit(f"{folder}: its site.json's shift is not the {profile} profile's site {info['site_index']}")
        population = recorded["population"]
        records = heldout_records(args.source, tuple(population["age_range_months"]), population["female_fraction"],
                                  args.per_site, args.seed)
        # seed + 1000: other noise and reader draws than the site's own images, the same shift
        written = write_site(args.out / folder.name, records, shift, info["site_index"], args.seed + 1000,
                             {"heldout_of": str(folder), "source": str(args.source)})
        logging.info("%s: %d held-out images", folder.name, written["n"])


if __name__ == "__main__":
    main()
