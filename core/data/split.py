"""Deterministic train/validation/test split by image id.

Each id is placed by a SHA-256 hash of the id alone, so its split never depends on the
other ids, on row order, on the Python process (unlike ``hash()``) or on the machine.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from core.data.config import DataError
from core.data.manifest import Record

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)


def _check(fractions: Sequence[float]) -> None:
    if len(fractions) != len(SPLITS) or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise DataError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")


def split_of(image_id: str, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> str:
    """Split ("train", "val" or "test") of one id.

    Args:
        image_id: the image id as written in the manifest.
        fractions: train, val and test fractions, summing to 1.

    Returns:
        The split name.
    """
    _check(fractions)
    digest = hashlib.sha256(image_id.encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64  # uniform in [0, 1)
    if u < fractions[0]:
        return "train"
    return "val" if u < fractions[0] + fractions[1] else "test"


def split_records(
    records: list[Record], fractions: Sequence[float] = DEFAULT_FRACTIONS
) -> dict[str, list[Record]]:
    """Group records by split, keeping their order within each split.

    Args:
        records: usable records of one site.
        fractions: train, val and test fractions, summing to 1.

    Returns:
        A dict with keys "train", "val" and "test" (always all three).
    """
    _check(fractions)
    groups: dict[str, list[Record]] = {name: [] for name in SPLITS}
    for record in records:
        groups[split_of(record.image_id, fractions)].append(record)
    return groups
