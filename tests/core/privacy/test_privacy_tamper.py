"""A site editing its own privacy files: the hash chain, the audit cross-check, settings that void the guarantee."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from core.errors import ConfigError
from core.privacy import DPConfig, LedgerError, PrivacyLedger, train_private_round
from core.privacy.guard import AUDIT_FILENAME
from core.privacy.ledger import history_epsilon
from core.train.training import TrainConfig

CPU = torch.device("cpu")
TRAIN = TrainConfig(batch_size=8, lr=1e-2)
NOISE = DPConfig(enabled=True, noise_multiplier=1.0, max_epsilon=100.0, delta=1e-3, seed=7)


@pytest.fixture
def private_round(make_tjnet: Callable, make_hands: Callable, make_loss: Callable) -> Callable[..., object]:
    def run(ledger: PrivacyLedger, dp: DPConfig = NOISE, size: int = 16) -> object:
        return train_private_round(make_tjnet(), make_hands(size), make_loss(), TRAIN, dp, ledger, 1, CPU)
    return run


def _lines(ledger: PrivacyLedger) -> list[str]:
    return ledger.path.read_text(encoding="utf-8").splitlines()


def _write(ledger: PrivacyLedger, lines: list[str]) -> None:
    ledger.path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _edit(line: str, **changes: object) -> str:
    return json.dumps({**json.loads(line), **changes})


def _three_rounds(ledger: PrivacyLedger) -> list[str]:
    for number in (1, 2, 3):
        ledger.record(1.0, 0.2, 5, delta=1e-3, round=number)
    return _lines(ledger)


@pytest.mark.parametrize("where", [0, 2])
@pytest.mark.parametrize("change", [{"noise_multiplier": 1000.0}, {"steps": 0}, {"sample_rate": 1e-9}])
def test_an_edited_mechanism_is_caught_anywhere_in_the_ledger(ledger: PrivacyLedger, where: int, change: dict) -> None:
    lines = _three_rounds(ledger)
    honest = ledger.epsilon(1e-3)
    lines[where] = _edit(lines[where], **change)
    _write(ledger, lines)
    with pytest.raises(LedgerError, match=rf"line {where + 1} does not match its own checksum") as info:
        ledger.epsilon(1e-3)
    assert str(ledger.path.parent) not in str(info.value)
    assert honest > 0


def test_a_removed_or_reordered_line_breaks_the_chain_even_with_fresh_checksums(ledger: PrivacyLedger) -> None:
    lines = _three_rounds(ledger)
    _write(ledger, [lines[0], lines[2]])
    with pytest.raises(LedgerError, match="line 2 does not follow the line before it"):
        ledger.entries()
    _write(ledger, [lines[1], lines[0], lines[2]])
    with pytest.raises(LedgerError, match="line 1 does not follow"):
        ledger.entries()


def test_the_chain_links_each_line_to_the_previous_one(ledger: PrivacyLedger) -> None:
    lines = [json.loads(line) for line in _three_rounds(ledger)]
    assert lines[0]["prev"] == "" and all(len(line["sha256"]) == 64 for line in lines)
    assert lines[1]["prev"] != lines[2]["prev"]


def test_unchained_lines_of_an_older_ledger_are_read_then_chained(ledger: PrivacyLedger) -> None:
    ledger.path.parent.mkdir(parents=True)
    ledger.path.write_text(json.dumps({"noise_multiplier": 1.0, "sample_rate": 0.2, "steps": 5}) + "\n")
    ledger.record(1.0, 0.2, 5)
    assert len(ledger.entries()) == 2
    first, second = _lines(ledger)
    _write(ledger, [_edit(first, steps=1), second])  # an old line edited later is caught by the next link
    with pytest.raises(LedgerError, match="line 2 does not follow"):
        ledger.entries()
    _write(ledger, [first, second, json.dumps({"noise_multiplier": 1.0, "sample_rate": 0.2, "steps": 5})])
    with pytest.raises(LedgerError, match="line 3 has no chain fields"):
        ledger.entries()


def test_a_ledger_cut_to_its_first_line_is_refused_against_the_audit_log(
        ledger: PrivacyLedger, private_round: Callable) -> None:
    """The issue's case: cutting the ledger bought 4 more rounds at a falsely low epsilon."""
    audit = ledger.path.with_name(AUDIT_FILENAME)
    for _ in range(3):
        result = private_round(ledger)
        with audit.open("a", encoding="utf-8") as handle:  # what the ClientApp writes after each reply
            handle.write(json.dumps({"kind": "train", "epsilon": result.epsilon,
                                     "metrics": {"epsilon": result.epsilon, "delta": result.delta}}) + "\n")
    _write(ledger, _lines(ledger)[:1])
    with pytest.raises(LedgerError, match=r"accounts for epsilon .* below the .* this site reported earlier"):
        private_round(ledger)
    assert len(_lines(ledger)) == 1  # nothing trained or recorded


@pytest.mark.parametrize("delta", [0.5, 0.99, 1 / 16])
def test_a_delta_at_or_above_one_over_n_is_refused(ledger: PrivacyLedger, private_round: Callable,
                                                   delta: float) -> None:
    with pytest.raises(ConfigError, match=r"dp delta .* is not below 1/N = 0.0625 for this site's 16 training"):
        private_round(ledger, DPConfig(enabled=True, noise_multiplier=1.0, max_epsilon=100.0, delta=delta, seed=1))
    assert not ledger.path.exists()


def test_a_negative_epsilon_is_never_reported() -> None:
    with pytest.raises(ConfigError, match="no meaningful guarantee"):
        history_epsilon([(1.0, 0.5, 2)], 0.99)


def test_dp_without_a_budget_is_refused() -> None:
    with pytest.raises(ConfigError, match="needs a budget"):
        DPConfig(enabled=True, noise_multiplier=1e-12)
    assert DPConfig(enabled=True, target_epsilon=4.0).budget == 4.0  # a target is its own budget


@pytest.mark.parametrize("kind", ["device", "folder", "dangling", "fifo"])
def test_a_ledger_that_is_not_a_regular_file_is_refused_without_naming_a_path(
        ledger: PrivacyLedger, private_round: Callable, tmp_path: Path, kind: str) -> None:
    ledger.path.parent.mkdir(parents=True)
    if kind == "device":
        ledger.path.symlink_to("/dev/zero")
    elif kind == "folder":
        ledger.path.mkdir()
    elif kind == "dangling":
        ledger.path.symlink_to(tmp_path / "gone.jsonl")
    else:
        os.mkfifo(ledger.path)
    with pytest.raises(LedgerError, match="privacy ledger privacy_ledger.jsonl is ") as info:
        private_round(ledger)
    assert str(tmp_path) not in str(info.value) and "/dev" not in str(info.value)
