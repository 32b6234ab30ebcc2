"""Declared layout of one site's data: where the files are, which columns mean what, which unit."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.errors import UserError

LABEL_UNITS = {"months": 1.0, "years": 12.0}


class DataError(UserError):
    """A problem with a site's data, explained in one user-facing line.

    CLIs catch it and print ``error: <message>``.
    """


@dataclass(frozen=True)
class SiteDataConfig:
    """Where a site's manifest and images are, and how to read the manifest.

    Column names and the label unit are declared, never guessed: the defaults match
    the RSNA export (``id,boneage,male`` in months); a Tongji-style site labelling in
    whole years sets ``label_unit="years"``.

    Attributes:
        root: the site folder.
        csv_name: manifest file inside ``root`` (an absolute path is also accepted).
        image_dir: image folder inside ``root`` (an absolute path is also accepted).
        id_column: column holding the image id, the file name without extension.
        age_column: column holding the bone age.
        sex_column: column holding the sex (True/False, 1/0, M/F, male/female).
        label_unit: unit of ``age_column``: "months" or "years".
    """

    root: Path
    csv_name: str = "labels.csv"
    image_dir: str = "images"
    id_column: str = "id"
    age_column: str = "boneage"
    sex_column: str = "male"
    label_unit: str = "months"

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        if self.label_unit not in LABEL_UNITS:
            raise DataError(
                f"unknown label unit {self.label_unit!r}; expected one of {', '.join(LABEL_UNITS)}"
            )
        columns = (self.id_column, self.age_column, self.sex_column)
        if len(set(columns)) != len(columns):
            raise DataError(f"id, age and sex columns must differ, got {columns}")

    @property
    def csv_path(self) -> Path:
        """Absolute or root-relative path of the manifest."""
        return self.root / self.csv_name

    @property
    def image_path(self) -> Path:
        """Folder holding the ``<id>.<ext>`` images."""
        return self.root / self.image_dir

    @property
    def months_per_unit(self) -> float:
        """Factor turning a label into months."""
        return LABEL_UNITS[self.label_unit]
