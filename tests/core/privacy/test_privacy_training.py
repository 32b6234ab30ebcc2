"""A private round on a tiny TJ-Net: what trains, what the ledger holds, refusals, determinism."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from opacus.accountants import RDPAccountant

from core.train.loss import JointLoss
from core.privacy import (BudgetExceeded, DPConfig, DPIncompatibleModel, PrivacyLedger, PrivateRoundResult,
                          train_private_round)
from core.train.training import TrainConfig

CPU = torch.device("cpu")
TRAIN = TrainConfig(batch_size=8, lr=1e-2)
NOISE = DPConfig(enabled=True, noise_multiplier=1.0, max_epsilon=100.0, max_grad_norm=1.0, delta=1e-3, seed=7)


@pytest.fixture
def private_round(make_hands: Callable, make_loss: Callable) -> Callable[..., PrivateRoundResult]:
    """`private_round(model, ledger, dp=NOISE, epochs=1, **kwargs)` on 24 random images, batch 8."""
    def run(model: torch.nn.Module, ledger: PrivacyLedger, dp: DPConfig = NOISE, epochs: int = 1,
            **kwargs: Any) -> PrivateRoundResult:
        return train_private_round(model, make_hands(24), make_loss(), TRAIN, dp, ledger, epochs, CPU, **kwargs)
    return run


def _clone(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in model.state_dict().items()}


def test_only_unfrozen_blocks_change_and_keys_stay(
        ledger: PrivacyLedger, make_tjnet: Callable, private_round: Callable) -> None:
    model = make_tjnet(frozen=(1, 2, 3))
    before = _clone(model)
    result = private_round(model, ledger, context={"round": 1})
    after = model.state_dict()
    assert list(after) == list(before)
    for key, value in after.items():
        if key.split(".")[0] in ("block1", "block2", "block3"):
            assert torch.equal(value, before[key]), key  # conv and GroupNorm weights of frozen blocks
        elif key.endswith("weight"):
            assert not torch.equal(value, before[key]), key
    assert not any(p.grad_sample is not None for p in model.parameters() if hasattr(p, "grad_sample"))
    entries = ledger.entries()
    assert len(entries) == 1 and entries[0].steps == result.steps == 3
    assert entries[0].context == {"delta": 1e-3, "round": 1}
    assert result.sample_rate == pytest.approx(1 / 3)
    assert result.epsilon == pytest.approx(ledger.epsilon(1e-3)) and result.epsilon > 0


def test_two_runs_with_the_same_seeds_give_identical_weights(
        tmp_path: Path, make_tjnet: Callable, private_round: Callable) -> None:
    models = []
    for run in ("a", "b"):
        model = make_tjnet(frozen=())
        private_round(model, PrivacyLedger(tmp_path / run / "privacy_ledger.jsonl"))
        models.append(model.state_dict())
    assert all(torch.equal(models[0][key], models[1][key]) for key in models[0])


def test_rounds_and_a_restart_report_one_accountant_over_all_steps(
        tmp_path: Path, make_tjnet: Callable, private_round: Callable) -> None:
    path = tmp_path / "privacy_ledger.jsonl"
    model, ledger, reference = make_tjnet(), PrivacyLedger(path), RDPAccountant()
    for number in range(1, 4):
        if number == 3:
            ledger = PrivacyLedger(path)  # the site restarts between rounds 2 and 3
        result = private_round(model, ledger, epochs=1 if number < 3 else 2)
        for _ in range(result.steps):
            reference.step(noise_multiplier=result.noise_multiplier, sample_rate=result.sample_rate)
        assert result.epsilon == pytest.approx(reference.get_epsilon(1e-3), rel=1e-9)
    assert [e.steps for e in PrivacyLedger(path).entries()] == [3, 3, 6]


def test_target_epsilon_fixes_sigma_for_the_site_and_refuses_past_the_budget(
        tmp_path: Path, make_tjnet: Callable, private_round: Callable) -> None:
    path = tmp_path / "privacy_ledger.jsonl"
    dp = DPConfig(enabled=True, target_epsilon=8.0, delta=1e-3, seed=3)
    model = make_tjnet()
    sigmas = [private_round(model, PrivacyLedger(path), dp, planned_rounds=2).noise_multiplier for _ in range(2)]
    assert sigmas[0] == sigmas[1]
    assert PrivacyLedger(path).epsilon(1e-3) == pytest.approx(8.0, rel=0.01)
    before, lines = _clone(model), path.read_text(encoding="utf-8")
    with pytest.raises(BudgetExceeded, match=r"round would raise epsilon from 7\.\d+ to \d+\.\d+, above the budget 8"):
        private_round(model, PrivacyLedger(path), dp, planned_rounds=2)
    assert path.read_text(encoding="utf-8") == lines
    assert all(torch.equal(value, before[key]) for key, value in model.state_dict().items())


def test_empty_poisson_draws_are_noised_steps_and_are_counted(
        ledger: PrivacyLedger, make_tjnet: Callable, make_hands: Callable, make_loss: Callable) -> None:
    calls = []
    loss = make_loss()
    counting = _Counting(loss, calls)
    model = make_tjnet()
    dp = DPConfig(enabled=True, noise_multiplier=1.0, max_epsilon=100.0, delta=1e-3, seed=0)
    result = train_private_round(model, make_hands(2), counting, TrainConfig(batch_size=1), dp, ledger, 8, CPU)
    assert result.steps == 16 == ledger.entries()[0].steps == result.stats.steps
    assert 0 < len(calls) < 16  # some draws were empty, yet they were noised steps and are accounted


def test_draws_before_a_failure_are_still_recorded(
        ledger: PrivacyLedger, make_tjnet: Callable, make_hands: Callable, make_loss: Callable) -> None:
    calls: list[int] = []

    class Failing(_Counting):
        def forward(self, output, age, male):
            if len(self.calls) == 2:
                raise RuntimeError("disk full")
            return super().forward(output, age, male)

    with pytest.raises(RuntimeError, match="disk full"):
        train_private_round(make_tjnet(), make_hands(24), Failing(make_loss(), calls), TRAIN, NOISE,
                            ledger, 2, CPU)
    assert ledger.entries()[0].steps >= 3  # the two updates and the draw that failed


def test_a_trainable_batchnorm_is_refused_in_one_line(
        ledger: PrivacyLedger, make_tjnet: Callable, private_round: Callable) -> None:
    model = make_tjnet(frozen=(1,), norm="batch")
    with pytest.raises(DPIncompatibleModel, match="BatchNorm2d 'block2.0.1' is trainable") as info:
        private_round(model, ledger)
    assert "\n" not in str(info.value) and ledger.entries() == []
    assert not ledger.path.parent.exists()  # nothing written for a model that cannot train


def test_frozen_batchnorm_in_eval_mode_is_fine(
        ledger: PrivacyLedger, make_tjnet: Callable, private_round: Callable) -> None:
    model = make_tjnet(frozen=(1, 2, 3, 4), norm="batch")
    running = model.block1[0][1].running_mean.clone()
    private_round(model, ledger)
    assert torch.equal(model.block1[0][1].running_mean, running)


def test_the_batch_coupled_joint_loss_is_refused(
        ledger: PrivacyLedger, make_tjnet: Callable, make_hands: Callable) -> None:
    with pytest.raises(ValueError, match="per_sample=True"):
        train_private_round(make_tjnet(), make_hands(8), JointLoss(77, 3.0), TRAIN, NOISE, ledger, 1, CPU)


def test_extra_loss_gradient_is_applied_after_the_noise(
        tmp_path: Path, make_tjnet: Callable, private_round: Callable) -> None:
    weights = []
    for scale in (0.0, 10.0):
        model = make_tjnet()
        private_round(model, PrivacyLedger(tmp_path / str(scale) / "l.jsonl"),
               extra_loss=lambda m, s=scale: s * m.block6.head[-1].bias.square().sum())
        weights.append(model.block6.head[-1].bias.detach().clone())
    assert weights[1].abs().sum() < weights[0].abs().sum()


class _Counting(torch.nn.Module):
    def __init__(self, loss: torch.nn.Module, calls: list[int]) -> None:
        super().__init__()
        self.loss, self.calls = loss, calls

    def forward(self, output, age, male):
        self.calls.append(int(age.shape[0]))
        return self.loss(output, age, male)
