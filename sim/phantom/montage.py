"""Montages for the docs: maturity by age group and sex, and what each site preset looks like.

``write_montages(Path("docs/img"))`` writes ``phantom_ages.png`` and ``phantom_sites.png`` (matplotlib, Agg).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sim.phantom.population import Subject  # noqa: E402
from sim.phantom.profiles import PRESETS, SiteProfile  # noqa: E402
from sim.phantom.synth import synthesize  # noqa: E402

AGE_GROUPS_YEARS = (0.5, 2.0, 4.0, 7.0, 10.0, 13.0, 15.0, 18.0)


def _clean(profile: SiteProfile) -> SiteProfile:
    """The profile without rotation, mirroring, collimation or markers: only anatomy varies."""
    acq = replace(profile.acquisition, rotation_deg=0.0, rotation_90_fraction=0.0, mirror_fraction=0.0,
                  collimation_fraction=0.0, marker_fraction=0.0, translate=0.0)
    return replace(profile, acquisition=acq, scanner=replace(profile.scanner, inverted_fraction=0.0))


def _grid(images: list[list[np.ndarray]], row_titles: list[str], col_titles: list[str], path: Path) -> Path:
    rows, cols = len(images), len(images[0])
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.35 * rows), squeeze=False)
    for r, row in enumerate(images):
        for c, image in enumerate(row):
            ax = axes[r][c]
            ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(row_titles[r], fontsize=7)
            if r == 0 and col_titles[c]:
                ax.set_title(col_titles[c], fontsize=7)
    fig.tight_layout(pad=0.2)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def age_montage(path: Path, size: int = 128, per_sex: int = 3, seed: int = 0) -> Path:
    """Rows: bone-age groups; columns: ``per_sex`` girls then boys (individual variation), RSNA scanner."""
    profile = _clean(PRESETS["rsna"]).with_image_size(size)
    rows = []
    for years in AGE_GROUPS_YEARS:
        row = []
        for male in (False, True):
            for k in range(per_sex):
                subject = Subject(male=male, age_months=12.0 * years, bone_age_months=12.0 * years)
                row.append(synthesize(profile, seed, 1000 * k + int(12 * years), subject).image)
        rows.append(row)
    titles = ["girl"] * per_sex + ["boy"] * per_sex
    return _grid(rows, [f"BA {y:g} y" for y in AGE_GROUPS_YEARS], titles, path)


def site_montage(path: Path, size: int = 128, per_site: int = 8, seed: int = 0) -> Path:
    """Rows: presets; columns: the first images of a dataset, as ``core.data`` decodes them."""
    rows = []
    for profile in PRESETS.values():
        row = []
        for index in range(per_site):
            sample = synthesize(profile.with_image_size(size), seed, index)
            flip = sample.inverted and profile.scanner.file_format == "png"  # DICOM polarity is undone on read
            row.append(1.0 - sample.image if flip else sample.image)
        rows.append(row)
    return _grid(rows, list(PRESETS), [""] * per_site, path)


def write_montages(out_dir: Path) -> list[Path]:
    """Write both montages into ``out_dir``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return [age_montage(out_dir / "phantom_ages.png"), site_montage(out_dir / "phantom_sites.png")]
