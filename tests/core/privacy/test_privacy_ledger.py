"""The privacy ledger: published epsilons, composition over rounds, restarts, corrupt files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from core.privacy import LedgerError, PrivacyLedger, noise_for_budget

# (accountant, sigma, q, steps, delta, epsilon) from /work/shared/notes/opacus.md
PUBLISHED = [
    ("rdp", 1.5, 0.04, 2250, 1e-5, 7.32911117),   # Opacus accountant tests
    ("prv", 1.5, 0.04, 2249, 1e-5, 6.77739571),   # Opacus accountant tests
    ("rdp", 1.3, 0.0025, 6000, 1e-5, 0.72422340),  # TF-Privacy compute_dp_sgd_privacy test 0
    ("rdp", 1.0, 0.001, 30000, 1e-7, 1.41549885),  # TF-Privacy compute_dp_sgd_privacy test 1
]


@pytest.mark.parametrize("accountant, sigma, rate, steps, delta, epsilon", PUBLISHED)
def test_ledger_reproduces_published_epsilons(ledger: PrivacyLedger, accountant: str, sigma: float, rate: float,
                                              steps: int, delta: float, epsilon: float) -> None:
    ledger.record(sigma, rate, steps, delta=delta)
    assert ledger.epsilon(delta, accountant) == pytest.approx(epsilon, rel=1e-3)


def test_empty_ledger_spent_nothing(ledger: PrivacyLedger) -> None:
    assert ledger.entries() == []
    assert ledger.epsilon(1e-5) == 0.0


def _step_by_step(segments: list[tuple[float, float, int]], delta: float) -> float:
    accountant = RDPAccountant()
    for sigma, rate, steps in segments:
        for _ in range(steps):
            accountant.step(noise_multiplier=sigma, sample_rate=rate)
    return accountant.get_epsilon(delta)


@pytest.mark.parametrize("segments", [
    [(1.0, 0.2, 5)] * 5,                                  # five equal rounds
    [(1.0, 0.2, 5), (1.3, 0.05, 40), (0.8, 0.5, 2), (1.0, 0.2, 5)],  # mixed sigma and site size
])
def test_rounds_compose_like_one_accountant_over_all_steps(ledger: PrivacyLedger,
                                                           segments: list[tuple[float, float, int]]) -> None:
    for number, segment in enumerate(segments, start=1):
        ledger.record(*segment, round=number)
    assert ledger.epsilon(1e-5) == pytest.approx(_step_by_step(segments, 1e-5), rel=1e-9)


def test_a_fresh_engine_per_round_would_reset_but_the_ledger_does_not(ledger: PrivacyLedger) -> None:
    expected = [4.54, 5.75, 6.70, 7.52, 8.25]  # opacus.md: sigma 1, q 0.2, 5 steps a round, delta 1e-5
    for want in expected:
        ledger.record(1.0, 0.2, 5)
        assert ledger.epsilon(1e-5) == pytest.approx(want, abs=0.01)


def test_restart_reads_the_same_history(ledger: PrivacyLedger) -> None:
    for rate in (0.2, 0.1, 0.2):
        ledger.record(1.1, rate, 10, run_id="a")
    reopened = PrivacyLedger(ledger.path)
    reopened.record(1.1, 0.2, 10, run_id="b")
    segments = [(1.1, 0.2, 10), (1.1, 0.1, 10), (1.1, 0.2, 10), (1.1, 0.2, 10)]
    assert PrivacyLedger(ledger.path).epsilon(1e-5) == pytest.approx(_step_by_step(segments, 1e-5), rel=1e-9)
    assert [e.context["run_id"] for e in reopened.entries()] == ["a", "a", "a", "b"]


def test_projection_does_not_record(ledger: PrivacyLedger) -> None:
    ledger.record(1.0, 0.2, 5)
    projected = ledger.projected_epsilon(1.0, 0.2, 5, 1e-5)
    assert len(ledger.entries()) == 1
    ledger.record(1.0, 0.2, 5)
    assert ledger.epsilon(1e-5) == pytest.approx(projected)


def test_noise_for_budget_matches_opacus_on_an_empty_ledger(ledger: PrivacyLedger) -> None:
    sigma = noise_for_budget(ledger, 3.0, 0.05, 200, 1e-5)
    assert sigma == pytest.approx(get_noise_multiplier(target_epsilon=3.0, target_delta=1e-5, sample_rate=0.05,
                                                       steps=200, accountant="rdp"), rel=0.01)
    assert ledger.projected_epsilon(sigma, 0.05, 200, 1e-5) <= 3.0


def test_noise_for_budget_counts_what_was_spent(ledger: PrivacyLedger) -> None:
    fresh = noise_for_budget(ledger, 3.0, 0.05, 200, 1e-5)
    ledger.record(2.0, 0.05, 100)
    assert 0.0 < ledger.epsilon(1e-5) < 3.0
    assert noise_for_budget(ledger, 3.0, 0.05, 200, 1e-5) > fresh


@pytest.mark.parametrize("bad_line", ['{"noise_multiplier": 1.0, "sample_rate": 0.2, "ste', '[1, 2]',
                                      '{"noise_multiplier": 1.0, "sample_rate": 2.0, "steps": 5}'])
def test_a_corrupt_line_is_an_error_naming_file_and_line(ledger: PrivacyLedger, bad_line: str) -> None:
    ledger.record(1.0, 0.2, 5)
    with ledger.path.open("a", encoding="utf-8") as handle:
        handle.write(bad_line)
    with pytest.raises(LedgerError, match=rf"{ledger.path.name} line 2") as info:
        ledger.epsilon(1e-5)
    assert "\n" not in str(info.value)


def test_lines_are_json_with_the_mechanism_and_context(ledger: PrivacyLedger) -> None:
    ledger.record(1.2, 0.25, 8, delta=1e-5, run_id="r1", round=3)
    line = json.loads(Path(ledger.path).read_text(encoding="utf-8").splitlines()[0])
    assert {"time", "noise_multiplier", "sample_rate", "steps", "delta", "run_id", "round"} <= set(line)
