"""What to predict: image files, folders and CSV worklists, and the patient facts each image comes with.

A worklist CSV has a ``path`` column (relative to the CSV's folder or absolute) and optional ``patient_id``,
``sex`` (M/F, male/female, 1/0, True/False), ``birth_date`` and ``study_date`` (YYYY-MM-DD) and
``chronological_age`` (years). Each fact is taken, in order of precedence, from the command line, the
worklist, the DICOM header; the source goes into the output. Nothing is written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pandas as pd

from core.data import DataError
from core.data.manifest import IMAGE_EXTENSIONS, SEX_VALUES
from core.data.patient import PatientTags, months_between

FOLDER_EXTENSIONS = (*IMAGE_EXTENSIONS, ".dicom")
WORKLIST_COLUMNS = ("path", "patient_id", "sex", "birth_date", "study_date", "chronological_age")


@dataclass(frozen=True)
class PatientFacts:
    """Facts given for an image (command line or worklist); None where not given."""

    patient_id: str | None = None
    male: bool | None = None
    birth_date: date | None = None
    study_date: date | None = None
    age_months: float | None = None


MAX_CHRONOLOGICAL_MONTHS = 360.0  # 30 years: a pediatric bone age past this is a wrong tag, not a patient


@dataclass(frozen=True)
class WorkItem:
    path: Path
    given: PatientFacts = PatientFacts()
    problem: str = ""  # why this input is refused before it is read (a bad worklist row), "" when none
    folder: Path | None = None  # the input folder it was found in (its site's films); None for a file or a row


@dataclass(frozen=True)
class Resolved:
    """The facts used for one image and where each came from ("" when unknown)."""

    patient_id: str
    male: bool | None
    sex_source: str
    age_months: float | None
    age_source: str
    flags: tuple[str, ...]


def parse_date(text: str, what: str) -> date:
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise DataError(f"{what}: {text!r} is not a date (YYYY-MM-DD)") from None


def parse_sex(text: str, what: str) -> bool:
    male = SEX_VALUES.get(text.strip().lower())
    if male is None:
        raise DataError(f"{what}: unknown sex {text!r} (M or F)")
    return male


def collect(inputs: list[Path]) -> list[WorkItem]:
    """Work items of image files, folders (searched recursively, sorted) and worklist CSVs, in order."""
    items: list[WorkItem] = []
    for entry in inputs:
        if entry.is_dir():
            # a link that points nowhere or to itself is kept: it gets a row with its reason, never silence
            found = sorted(p for p in entry.rglob("*") if p.suffix.lower() in FOLDER_EXTENSIONS
                           and (p.is_file() or p.is_symlink()))
            if not found:
                raise DataError(f"{entry}: no images ({', '.join(FOLDER_EXTENSIONS)}) in this folder")
            items.extend(WorkItem(p, folder=entry) for p in found)
        elif entry.suffix.lower() == ".csv":
            items.extend(read_worklist(entry))
        elif entry.exists():
            items.append(WorkItem(entry))
        else:
            raise DataError(f"{entry}: no such file or folder")
    return items


def read_worklist(path: Path) -> list[WorkItem]:
    """Rows of a worklist CSV as work items (a bad cell is an error naming its row)."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable worklist CSV ({str(exc).splitlines()[0]})") from None
    if "path" not in table.columns:
        raise DataError(f"{path}: a worklist needs a 'path' column; columns found: {', '.join(table.columns)}")
    items = []
    for number, row in enumerate(table.to_dict("records"), start=2):
        image = Path(row["path"].strip())
        image = image if image.is_absolute() else path.parent / image
        try:
            items.append(WorkItem(image, _row_facts(row, f"line {number}")))
        except DataError as exc:  # one bad row is that row's refusal; the others go on
            items.append(WorkItem(image, problem=f"worklist {path.name} {exc}"))
    return items


def _row_facts(row: dict[str, str], where: str) -> PatientFacts:
    age = row.get("chronological_age", "").strip()
    try:
        age_months = float(age) * 12.0 if age else None
    except ValueError:
        raise DataError(f"{where}: chronological_age {age!r} is not a number of years") from None
    if age_months is not None and not (math.isfinite(age_months) and age_months >= 0):
        raise DataError(f"{where}: chronological_age {age!r} is not a non-negative number of years")
    return PatientFacts(
        patient_id=row.get("patient_id", "").strip() or None,
        male=parse_sex(row["sex"], where) if row.get("sex", "").strip() else None,
        birth_date=parse_date(row["birth_date"], where) if row.get("birth_date", "").strip() else None,
        study_date=parse_date(row["study_date"], where) if row.get("study_date", "").strip() else None,
        age_months=age_months,
    )


def _first(*candidates: tuple[object, str]) -> tuple[object, str]:
    for value, source in candidates:
        if value is not None:
            return value, source
    return None, ""


def resolve(item: WorkItem, command_line: PatientFacts, tags: PatientTags) -> Resolved:
    """Combine the command line, the worklist and the DICOM header (in that order of precedence)."""
    given = item.given
    male, sex_source = _first((command_line.male, "command line"), (given.male, "worklist"),
                              (tags.male, "DICOM PatientSex"))
    birth, birth_source = _first((command_line.birth_date, "command line"), (given.birth_date, "worklist"),
                                 (tags.birth_date, "DICOM PatientBirthDate"))
    study, study_source = _first((command_line.study_date, "command line"), (given.study_date, "worklist"),
                                 (tags.study_date, f"DICOM {tags.study_date_tag}"))
    flags: list[str] = []
    from_dates = None
    if birth is not None and study is not None:
        if study < birth:
            flags.append("study date before birth date: chronological age not used")
        else:
            from_dates = (months_between(birth, study), f"birth date ({birth_source}) to study date ({study_source})")
    elif birth is not None or study is not None:
        known, missing = ("birth date", "study date") if birth is not None else ("study date", "birth date")
        flags.append(f"{known} ({birth_source or study_source}) without a {missing}: no chronological age from dates")
    stated = [(command_line.age_months, "command line"), (given.age_months, "worklist"),
              (tags.age_months, "DICOM PatientAge")]
    candidates = []
    for months, source in [*stated[:2], from_dates or (None, ""), stated[2]]:
        if months is not None and not 0 <= months <= MAX_CHRONOLOGICAL_MONTHS:
            flags.append(f"implausible chronological age {months:g} months ({source}): not used")
        elif months is not None:
            candidates.append((months, source))
    age, age_source = candidates[0] if candidates else (None, "")
    if from_dates is not None:
        for months, source in candidates:
            tolerance = 12.0 if source == "DICOM PatientAge" else 1.0  # a DICOM age counts whole years
            if source == from_dates[1] or abs(months - from_dates[0]) <= tolerance:
                continue
            if source == "command line":  # the user's explicit choice wins, flagged
                flags.append(f"chronological age {months:g} months (command line) differs from the dates "
                             f"({from_dates[0]:.1f} months): the command line is used")
            elif age_source != "command line":
                flags.append(f"chronological age {months:g} months ({source}) contradicts the dates "
                             f"({from_dates[0]:.1f} months): chronological age not used")
                age, age_source = None, ""
    patient_id = given.patient_id or tags.patient_id or item.path.stem
    return Resolved(patient_id, male, sex_source, age, age_source, tuple(flags))
