"""The ledger's line format, as an auditor outside OssiFL would check it, and the mechanisms it accepts.

Written for the mutants `mutmut` left alive in `core/privacy/ledger.py` (docs/mutation.md): the documented digest,
the UTC time stamp, the bounds of a possible mechanism, unchained (older) lines and the log line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path

import pytest

from core.privacy import BudgetExceeded, LedgerError, PrivacyLedger
from core.privacy.ledger import history_epsilon


def _lines(ledger: PrivacyLedger) -> list[dict]:
    return [json.loads(line) for line in ledger.path.read_text(encoding="utf-8").splitlines()]


def test_each_line_carries_the_documented_digests_and_a_utc_time(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "state" / "site" / "privacy_ledger.jsonl")  # its folder is created
    ledger.record(1.1, 0.03, 31, round=1)
    ledger.record(1.2, 0.04, 7, round=2)
    first, second = _lines(ledger)
    raw_first = ledger.path.read_text(encoding="utf-8").splitlines()[0]
    for line in (first, second):  # sha256 of the entry without it, keys sorted (an auditor's recomputation)
        body = {k: v for k, v in line.items() if k != "sha256"}
        assert line["sha256"] == hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()
        assert line["time"].endswith("+00:00")
    assert first["prev"] == "" and second["prev"] == hashlib.sha256(raw_first.encode("utf-8")).hexdigest()
    entries = ledger.entries()
    assert entries[0].time == first["time"] and entries[0].context == {"round": 1}  # time is not context
    assert [e.mechanism for e in entries] == [(1.1, 0.03, 31), (1.2, 0.04, 7)]


def test_unchained_lines_written_before_the_chain_are_read_as_history(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "privacy_ledger.jsonl")
    old = [{"time": "t", "noise_multiplier": 1.0, "sample_rate": 0.01, "steps": 5},
           {"noise_multiplier": 1.0, "sample_rate": 0.01, "steps": 5}]  # the oldest lines may lack a time
    ledger.path.write_text("".join(json.dumps(line) + "\n" for line in old), encoding="utf-8")
    ledger.record(1.0, 0.01, 5)  # chained after the two old lines
    assert [e.mechanism for e in ledger.entries()] == [(1.0, 0.01, 5)] * 3
    assert [e.time for e in ledger.entries()][:2] == ["t", ""]


@pytest.mark.parametrize("sigma, rate, steps", [
    (0.0, 0.1, 1), (-1.0, 0.1, 1), (math.nan, 0.1, 1), (math.inf, 0.1, 1), (True, 0.1, 1), ("1", 0.1, 1),
    (1.0, 0.0, 1), (1.0, 1.5, 1), (1.0, 1.0 + 1e-9, 1), (1.0, 0.1, -1), (1.0, 0.1, 10**9 + 1), (1.0, 0.1, 2.5),
])
def test_an_impossible_new_mechanism_is_refused_before_it_is_written(tmp_path: Path, sigma, rate, steps) -> None:
    ledger = PrivacyLedger(tmp_path / "privacy_ledger.jsonl")
    line = {"noise_multiplier": sigma, "sample_rate": rate, "steps": steps}
    with pytest.raises(LedgerError, match="^the new entry is damaged: impossible mechanism"):
        PrivacyLedger._validate(line, "the new entry")
    if isinstance(sigma, float) and isinstance(steps, int):  # what `record` can be given
        with pytest.raises(LedgerError, match="^the new entry is damaged: impossible mechanism"):
            ledger.record(sigma, rate, steps)
        assert not ledger.path.exists()
    ledger.path.write_text(json.dumps(line) + "\n", encoding="utf-8")
    with pytest.raises(LedgerError, match="line 1 is damaged"):
        ledger.entries()


def test_the_bounds_themselves_are_possible(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "privacy_ledger.jsonl")
    ledger.record(1e-3, 1.0, 10**9)  # q = 1 (full batch) and the largest step count
    ledger.record(1.0, 0.5, 0)  # a segment that took no step
    assert [e.mechanism for e in ledger.entries()] == [(1e-3, 1.0, 10**9), (1.0, 0.5, 0)]


def test_a_line_lacking_a_mechanism_key_or_not_an_object_names_the_keys(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "privacy_ledger.jsonl")
    for text in ('{"noise_multiplier": 1.0, "sample_rate": 0.1}', "[1, 2, 3]"):
        ledger.path.write_text(text + "\n", encoding="utf-8")
        with pytest.raises(LedgerError, match="line 1 lacks one of noise_multiplier, sample_rate, steps$"):
            ledger.entries()


def test_projection_uses_the_accountant_asked_for(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "privacy_ledger.jsonl")
    ledger.record(1.5, 0.04, 1000)
    projected = ledger.projected_epsilon(1.5, 0.04, 1249, 1e-5, "prv")
    assert projected == pytest.approx(history_epsilon([(1.5, 0.04, 2249)], 1e-5, "prv"), rel=1e-6)
    assert projected < ledger.projected_epsilon(1.5, 0.04, 1249, 1e-5, "rdp")  # PRV is tighter


def test_recording_logs_the_mechanism(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ledger = PrivacyLedger(tmp_path / "privacy_ledger.jsonl")
    with caplog.at_level(logging.INFO, logger="core.privacy.ledger"):
        ledger.record(1.1, 0.03, 31)
    assert caplog.messages == [f"privacy ledger {ledger.path}: recorded sigma 1.1, q 0.03, 31 steps"]


def test_a_segment_without_steps_spends_nothing_and_one_step_spends_something(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "privacy_ledger.jsonl")
    ledger.record(1.0, 0.5, 0)
    assert ledger.epsilon(1e-5) == 0.0
    ledger.record(1.0, 0.5, 1)
    assert ledger.epsilon(1e-5) == pytest.approx(history_epsilon([(1.0, 0.5, 1)], 1e-5)) and ledger.epsilon(1e-5) > 0
    with pytest.raises(ValueError, match="accountant must be one of"):
        ledger.epsilon(1e-5, "gdp")


def test_a_blank_line_does_not_hide_the_lines_after_it(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "privacy_ledger.jsonl")
    ledger.record(1.0, 0.1, 3)
    ledger.path.write_text(ledger.path.read_text(encoding="utf-8") + "\n", encoding="utf-8")
    ledger.record(1.0, 0.1, 4)
    assert [e.steps for e in ledger.entries()] == [3, 4]  # stopping at the blank line would under-report epsilon


def test_a_line_with_nan_in_its_context_is_refused_in_one_line(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "privacy_ledger.jsonl")
    with pytest.raises(ValueError):
        ledger.record(1.0, 0.1, 3, loss=math.nan)  # never written
    assert not ledger.path.exists()
    line = {"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 3, "loss": math.nan, "prev": ""}
    line["sha256"] = hashlib.sha256(json.dumps(line, sort_keys=True).encode("utf-8")).hexdigest()  # NaN allowed
    ledger.path.write_text(json.dumps(line) + "\n", encoding="utf-8")
    with pytest.raises(LedgerError, match="line 1 does not match its own checksum"):  # was a ValueError traceback
        ledger.entries()


@pytest.mark.parametrize("kind, message", [("folder", "is a folder, not a regular file"),
                                           ("device link", "is a link to a device, pipe or socket, not a regular"),
                                           ("fifo", "is a device, pipe or socket, not a regular file")])
def test_a_ledger_that_is_no_regular_file_is_named_for_what_it_is(tmp_path: Path, kind: str, message: str) -> None:
    import os

    path = tmp_path / "privacy_ledger.jsonl"
    if kind == "folder":
        path.mkdir()
    elif kind == "device link":
        path.symlink_to("/dev/null")
    else:
        os.mkfifo(path)
    with pytest.raises(LedgerError, match=f"^privacy ledger privacy_ledger.jsonl {message}"):
        PrivacyLedger(path).entries()


def test_a_refused_round_says_how_far_it_would_have_gone() -> None:
    refused = BudgetExceeded(1.23456, 9.87654, 8.0)
    assert str(refused) == "round would raise epsilon from 1.235 to 9.877, above the budget 8"
    assert (refused.current, refused.projected, refused.budget) == (1.23456, 9.87654, 8.0)
