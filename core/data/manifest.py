"""Read a site's manifest (CSV + image folder) into usable records and recorded skips.

Whole-file problems (missing CSV or column, empty CSV, duplicate ids) raise ``DataError``;
per-row problems drop the row and record a ``Skip`` with its reason. Nothing is written.
"""

from __future__ import annotations

import errno
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from core.data.config import DataError, SiteDataConfig

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".dcm")
MAX_AGE_MONTHS = 240.0
SEX_VALUES = {"true": True, "1": True, "m": True, "male": True,
              "false": False, "0": False, "f": False, "female": False}

EMPTY_ID = "empty id"
NO_IMAGE = "no image file"
AGE_NOT_NUMBER = "age not a number"
AGE_OUT_OF_RANGE = "age out of range"
UNKNOWN_SEX = "unknown sex value"


@dataclass(frozen=True)
class Record:
    """One usable labelled image."""

    image_id: str
    path: Path
    age_months: float
    male: bool


@dataclass(frozen=True)
class Skip:
    """A row or image left out, with a reason from a fixed list and a free-text detail."""

    image_id: str
    reason: str
    detail: str = ""


@dataclass
class Manifest:
    """Records and skips of one site, plus the unlabelled images found in its folder."""

    records: list[Record]
    skipped: list[Skip]
    n_images_without_label: int = 0

    def summary(self) -> dict[str, Any]:
        """Counts a site can share: rows, skips by reason, sex balance and age distribution."""
        return summarize(self.records, self.skipped, self.n_images_without_label)


def summarize(records: list[Record], skipped: list[Skip], n_images_without_label: int = 0) -> dict[str, Any]:
    """Summary counts of records and skips (ages in months, histogram by whole year)."""
    ages = [r.age_months for r in records]
    histogram = Counter(min(int(a // 12), int(MAX_AGE_MONTHS // 12)) for a in ages)
    return {
        "n_rows": len(records) + len(skipped),
        "n_usable": len(records),
        "n_skipped": len(skipped),
        "skipped_by_reason": dict(Counter(s.reason for s in skipped).most_common()),
        "n_images_without_label": n_images_without_label,
        "n_male": sum(r.male for r in records),
        "n_female": sum(not r.male for r in records),
        "age_min_months": min(ages) if ages else None,
        "age_mean_months": sum(ages) / len(ages) if ages else None,
        "age_max_months": max(ages) if ages else None,
        "age_histogram_years": {year: histogram[year] for year in sorted(histogram)},
    }


def load_manifest(config: SiteDataConfig) -> Manifest:
    """Read the manifest of a site and match each row to its image file.

    Args:
        config: the site's declared layout.

    Returns:
        The usable records (in CSV order) and the skipped rows with reasons.

    Raises:
        DataError: missing or empty CSV, missing column, missing image folder, duplicate ids.
    """
    table = _read_csv(config)
    images = _index_images(config.image_path)
    factor = config.months_per_unit
    records: list[Record] = []
    skipped: list[Skip] = []
    columns = [config.id_column, config.age_column, config.sex_column]
    for image_id, age, sex in table[columns].itertuples(index=False, name=None):
        image_id = image_id.strip()
        result = _parse_row(image_id, age, sex, factor, images)
        (records if isinstance(result, Record) else skipped).append(result)
    labelled = {r.image_id for r in records} | {s.image_id for s in skipped}
    manifest = Manifest(records, skipped, sum(stem not in labelled for stem in images))
    for reason, count in manifest.summary()["skipped_by_reason"].items():
        logger.warning("%s: skipped %d row(s): %s", config.csv_path, count, reason)
    return manifest


def _read_csv(config: SiteDataConfig) -> pd.DataFrame:
    path = config.csv_path
    if not path.is_file():
        raise DataError(f"manifest not found: {path}")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except PermissionError:
        raise DataError(f"{path}: permission denied; run as a user who may read the labels file") from None
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path}: the file is empty") from exc
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") from exc
    _check_delimiter(path, table)
    roles = {"id": config.id_column, "age": config.age_column, "sex": config.sex_column}
    for role, column in roles.items():
        if column not in table.columns:
            found = ", ".join(map(str, table.columns))
            raise DataError(
                f"{path}: missing {role} column {column!r}; columns found: {found} "
                f"(declare the right name with the {role} column setting)"
            )
    if table.empty:
        raise DataError(f"{path}: no data rows")
    ids = table[config.id_column].str.strip()
    duplicated = ids[ids.duplicated() & (ids != "")].unique()
    if len(duplicated):
        shown = ", ".join(map(repr, duplicated[:5])) + (" ..." if len(duplicated) > 5 else "")
        raise DataError(
            f"{path}: {len(duplicated)} duplicate id(s) with ambiguous labels: {shown}; "
            "keep one row per id"
        )
    return table


_DELIMITERS = {";": "semicolon", "\t": "tab", "|": "vertical bar"}


def _check_delimiter(path: Path, table: pd.DataFrame) -> None:
    """A file read as one column whose header holds another separator was saved with that separator."""
    if len(table.columns) != 1:
        return
    header = str(table.columns[0])
    for delimiter, name in _DELIMITERS.items():
        if delimiter in header:
            raise DataError(f"{path}: the file looks {name}-separated (header {header!r}); "
                            f"save it as comma-separated CSV")


def _index_images(folder: Path) -> dict[str, Path]:
    """Map each image stem to its file, preferring extensions in ``IMAGE_EXTENSIONS`` order."""
    rank = {ext: i for i, ext in enumerate(IMAGE_EXTENSIONS)}
    best: dict[str, tuple[int, Path]] = {}
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                stem, ext = os.path.splitext(entry.name)
                ext = ext.lower()
                if ext in rank and entry.is_file() and (stem not in best or rank[ext] < best[stem][0]):
                    best[stem] = (rank[ext], Path(entry.path))
    except OSError as exc:
        raise DataError(_folder_problem(folder, exc)) from None
    return {stem: path for stem, (_, path) in best.items()}


def _folder_problem(folder: Path, exc: OSError) -> str:
    """One line for an image folder (or an entry in it) that cannot be listed or followed."""
    where = exc.filename or folder
    if exc.errno == errno.ELOOP:
        return f"{where}: symbolic link loop in the image folder; remove or fix the link"
    if exc.errno == errno.EACCES:
        return f"{where}: permission denied; run as a user who may read the image folder"
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return f"image folder not found: {folder}"
    return f"{where}: the image folder cannot be read ({os.strerror(exc.errno) if exc.errno else exc})"


def _parse_row(image_id: str, age: str, sex: str, factor: float, images: dict[str, Path]) -> Record | Skip:
    if not image_id:
        return Skip(image_id, EMPTY_ID)
    try:
        age_months = float(age) * factor
    except ValueError:
        return Skip(image_id, AGE_NOT_NUMBER, repr(age))
    if not math.isfinite(age_months):
        return Skip(image_id, AGE_NOT_NUMBER, repr(age))
    if not 0.0 <= age_months <= MAX_AGE_MONTHS:
        return Skip(image_id, AGE_OUT_OF_RANGE, f"{age_months:g} months")
    male = SEX_VALUES.get(sex.strip().lower())
    if male is None:
        return Skip(image_id, UNKNOWN_SEX, repr(sex))
    path = images.get(image_id)
    if path is None:
        return Skip(image_id, NO_IMAGE, f"no {image_id}{{{','.join(IMAGE_EXTENSIONS)}}}")
    return Record(image_id, path, age_months, male)

