"""What a DICOM header says about the patient: sex, birth date, study date and age (read-only).

Only the header is read (``stop_before_pixels``). Missing, empty or malformed values become None; a
file that is not DICOM gives an all-None ``PatientTags``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

logger = logging.getLogger(__name__)

DAYS_PER_MONTH = 365.25 / 12
_AGE_UNITS = {"D": 1 / DAYS_PER_MONTH, "W": 7 / DAYS_PER_MONTH, "M": 1.0, "Y": 12.0}
_AGE_STRING = re.compile(r"^(\d{1,3})([DWMY])$")


@dataclass(frozen=True)
class PatientTags:
    """Patient facts from an image header; None where absent or unreadable."""

    patient_id: str | None = None
    male: bool | None = None
    birth_date: date | None = None
    study_date: date | None = None
    age_months: float | None = None
    study_date_tag: str | None = None  # "StudyDate" or "AcquisitionDate"


def parse_dicom_date(value: str | None) -> date | None:
    """A DICOM DA value (YYYYMMDD) as a date, None when empty or invalid."""
    text = str(value or "").strip()
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


def parse_age_string(value: str | None) -> float | None:
    """A DICOM AS value ("010Y", "006M", "012W", "030D") in months, None when empty or invalid."""
    match = _AGE_STRING.match(str(value or "").strip().upper())
    return None if match is None else int(match.group(1)) * _AGE_UNITS[match.group(2)]


def months_between(birth: date, later: date) -> float:
    """Age in months (days / 30.44) from a birth date to a later date."""
    return (later - birth).days / DAYS_PER_MONTH


def read_patient_tags(path: Path) -> PatientTags:
    """Patient sex, dates and age from the DICOM header of `path` (all None for other files)."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, TypeError, AttributeError, KeyError) as exc:
        logger.debug("%s: no DICOM header (%s)", path, exc)
        return PatientTags()
    sex = str(ds.get("PatientSex", "") or "").strip().upper()
    study_date, tag = None, None
    for name in ("StudyDate", "AcquisitionDate"):
        study_date = parse_dicom_date(ds.get(name))
        if study_date is not None:
            tag = name
            break
    patient_id = str(ds.get("PatientID", "") or "").strip() or None
    return PatientTags(
        patient_id=patient_id,
        male={"M": True, "F": False}.get(sex),
        birth_date=parse_dicom_date(ds.get("PatientBirthDate")),
        study_date=study_date,
        age_months=parse_age_string(ds.get("PatientAge")),
        study_date_tag=tag,
    )
