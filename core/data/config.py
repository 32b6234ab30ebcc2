"""Declared layout of one site's data: where the files are, which columns mean what, which unit."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from core.errors import UserError
from core.schema import Schema, Setting

LABEL_UNITS = {"months": 1.0, "years": 12.0}

# The layout of a site folder, declared once: the command-line flags (`core.cli.add_data_arguments`), the node
# config keys (`deploy/site.toml`, `client.config`, the simulated sites) and the defaults all come from here.
LAYOUT_SCHEMA = Schema(
    Setting("csv_name", str, "labels.csv", "manifest file in the site folder", node_key="csv", flag="--csv"),
    Setting("image_dir", str, "images", "image folder in the site folder", node_key="image-dir"),
    Setting("id_column", str, "id", "column holding the image id (the file name without extension)",
            node_key="id-column"),
    Setting("age_column", str, "boneage", "column holding the bone age", node_key="age-column"),
    Setting("sex_column", str, "male", "column holding the sex (1/0, M/F, male/female)", node_key="sex-column"),
    Setting("label_unit", str, "months", "unit of the age column (a Tongji-style site labels in whole years)",
            node_key="label-unit", choices=tuple(LABEL_UNITS)),
)


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
    csv_name: str = LAYOUT_SCHEMA.default("csv_name")
    image_dir: str = LAYOUT_SCHEMA.default("image_dir")
    id_column: str = LAYOUT_SCHEMA.default("id_column")
    age_column: str = LAYOUT_SCHEMA.default("age_column")
    sex_column: str = LAYOUT_SCHEMA.default("sex_column")
    label_unit: str = LAYOUT_SCHEMA.default("label_unit")

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        if self.label_unit not in LABEL_UNITS:
            raise DataError(
                f"unknown label unit {self.label_unit!r}; expected one of {', '.join(LABEL_UNITS)}"
            )
        columns = (self.id_column, self.age_column, self.sex_column)
        if len(set(columns)) != len(columns):
            raise DataError(f"id, age and sex columns must differ, got {columns}")

    @classmethod
    def from_node_config(cls, root: Path, node: Mapping[str, Any]) -> "SiteDataConfig":
        """The site folder `root` read as the node config's layout keys declare (`csv`, `image-dir`, ...)."""
        return cls(root=root, **LAYOUT_SCHEMA.read(node, "node"))

    def node_config(self) -> dict[str, str]:
        """The node config keys that declare this layout (the inverse of `from_node_config`)."""
        return LAYOUT_SCHEMA.write(asdict(self), "node")

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
