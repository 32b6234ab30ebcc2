"""split_of / split_records: deterministic by id, ~0.8/0.1/0.1, independent of order and neighbours."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from core.data import DataError, Record, split_of, split_records

IDS = [str(1000 + i) for i in range(2000)]


def records(ids: list[str]) -> list[Record]:
    return [Record(i, Path(f"{i}.png"), 100.0, True) for i in ids]


def test_fractions_are_close_to_requested() -> None:
    counts = Counter(split_of(i) for i in IDS)
    assert abs(counts["train"] / 2000 - 0.8) < 0.03
    assert abs(counts["val"] / 2000 - 0.1) < 0.02
    assert abs(counts["test"] / 2000 - 0.1) < 0.02


def test_split_is_independent_of_order_and_of_other_ids() -> None:
    shuffled = IDS[:]
    random.Random(1).shuffle(shuffled)
    full = {name: {r.image_id for r in group} for name, group in split_records(records(IDS)).items()}
    other = {name: {r.image_id for r in group} for name, group in split_records(records(shuffled)).items()}
    half = split_records(records(IDS[:1000]))
    assert full == other
    assert all({r.image_id for r in half[name]} <= full[name] for name in full)


def test_split_is_stable_across_processes_and_versions() -> None:
    # Pinned: a change here would silently move images between every site's train and test sets.
    code = {"train": ".", "val": "v", "test": "T"}
    assert "".join(code[split_of(str(i))] for i in range(1000, 1100)) == (
        ".T............v.T...TvT.v....v...T.T.............."
        "T.v...T.T.......TT..v.T.T...vv.v............Tv...."
    )


def test_records_keep_order_and_nothing_is_lost() -> None:
    groups = split_records(records(IDS))
    assert sorted(r.image_id for g in groups.values() for r in g) == sorted(IDS)
    assert [r.image_id for r in groups["val"]] == sorted(r.image_id for r in groups["val"])


def test_custom_fractions_and_invalid_fractions() -> None:
    assert {split_of(i, (1.0, 0.0, 0.0)) for i in IDS[:100]} == {"train"}
    with pytest.raises(DataError, match="fractions"):
        split_of("a", (0.8, 0.1, 0.2))
