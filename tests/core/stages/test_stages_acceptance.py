"""The acceptance gate's pose statistic: the share of each pose's copies read more than the tolerance off."""

from __future__ import annotations

import numpy as np
import pytest

from core.stages import acceptance
from core.stages.acceptance import POSES, AcceptancePolicy, _poses

POLICY = AcceptancePolicy()  # 24 images, 12 months, half of a pose


def _check(monkeypatch: pytest.MonkeyPatch, changes: dict[str, list[float]], images: int = 24):
    full = {name: np.asarray(changes.get(name, [1.0] * images), dtype=float) for name in POSES}
    monkeypatch.setattr(acceptance, "pose_changes", lambda checkpoint, records, n, device: (images, full))
    return _poses(None, [], POLICY, None)


def test_a_few_copies_far_off_do_not_fail_a_pose_whose_median_copy_is_read_right(monkeypatch) -> None:
    # what a canonicalising pipeline gives on real films: most copies within months, a few left mirrored 70 off
    # (a mean of 12.5 months: a mean over the copies would fail it)
    check = _check(monkeypatch, {name: [1.0] * 20 + [70.0] * 4 for name in POSES})
    assert check.passed and check.reason == ""
    assert check.figures["mirror"] == {"refused": 0, "read": 24, "moved": 4, "moved_share": 4 / 24,
                                       "median_change_months": 1.0}
    assert (check.figures["tolerance_months"], check.figures["max_moved_share"]) == (12.0, 0.5)


def test_a_pose_fails_when_more_than_half_of_its_copies_moved_and_the_reason_names_it(monkeypatch) -> None:
    assert _check(monkeypatch, {"mirror": [13.0] * 12 + [0.0] * 12}).passed  # half: not more than half
    assert _check(monkeypatch, {"mirror": [12.0] * 24}).passed  # at the tolerance: not moved
    check = _check(monkeypatch, {"mirror": [13.0] * 13 + [0.0] * 11, "invert": [40.0] * 24})
    assert not check.passed and [n for n in POSES if check.figures[n]["moved"] > 12] == ["mirror", "invert"]
    assert "read more than 12 months off: mirror 13 of 24, invert 24 of 24; limit 50% per pose" in check.reason


def test_a_copy_the_quality_gate_refused_counts_as_not_moved(monkeypatch) -> None:
    check = _check(monkeypatch, {"rotate90": [np.nan] * 20 + [50.0] * 4})
    assert check.passed and check.figures["rotate90"]["refused"] == 20 and check.figures["rotate90"]["read"] == 4
    assert check.figures["rotate90"]["moved_share"] == 4 / 24


def test_no_image_read_upright_is_a_failed_check(monkeypatch) -> None:
    check = _check(monkeypatch, {name: [] for name in POSES}, images=0)
    assert not check.passed and "none of the images picked" in check.reason
