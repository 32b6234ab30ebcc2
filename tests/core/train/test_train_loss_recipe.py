"""The recipe's loss options: when alpha rises (four rules) and Gaussian label smoothing, checked by hand."""

from __future__ import annotations

import math

import pytest
import torch

from core.errors import ConfigError
from core.train.alpha import AlphaSchedule
from core.train.loss import JointLoss, JointLossConfig, smoothed_targets
from core.model.heads import AgeOutput


def _hand_gaussian(age: float, step: float, classes: int, sigma: float) -> list[float]:
    weights = [math.exp(-((k * step - age) ** 2) / (2 * sigma**2)) for k in range(classes)]
    return [w / sum(weights) for w in weights]


def test_smoothed_targets_are_a_normalised_gaussian_over_the_class_centres() -> None:
    targets = smoothed_targets(torch.tensor([3.0, 100.0]), 77, 3.0, 3.0)
    # age 3 months on the 3-month grid, sigma 3: q_k ~ exp(-(3k - 3)^2 / 18): e^-0.5, 1, e^-0.5, e^-2, ...
    z = 1 + 2 * math.exp(-0.5) + math.exp(-2) + math.exp(-4.5) + math.exp(-8) + math.exp(-12.5) + math.exp(-18)
    assert targets[0, 1].item() == pytest.approx(1 / z, rel=1e-5)
    assert targets[0, 0].item() == pytest.approx(math.exp(-0.5) / z, rel=1e-5)
    assert targets[0, 3].item() == pytest.approx(math.exp(-2) / z, rel=1e-5)
    assert targets[1].tolist() == pytest.approx(_hand_gaussian(100.0, 3.0, 77, 3.0), abs=1e-6)
    assert targets.sum(dim=1).tolist() == pytest.approx([1.0, 1.0])


def test_label_smoothing_changes_the_age_cross_entropy_to_the_soft_target() -> None:
    q3, q100 = _hand_gaussian(3.0, 3.0, 77, 3.0), _hand_gaussian(100.0, 3.0, 77, 3.0)
    # the model predicts each image's Gaussian exactly (floored where it underflows)
    logits = torch.log(torch.tensor([q3, q100]).clamp_min(1e-30))
    output = AgeOutput(expected_months=torch.tensor([3.0, 100.0]), age_logits=logits)
    age, male = torch.tensor([3.0, 100.0]), torch.tensor([0.0, 1.0])

    def entropy(q: list[float]) -> float:
        return -sum(p * math.log(p) for p in q if p > 1e-30)

    # two classes present (1 and 33), each with batch share 1/2: weights 1 - 1/2; the cross-entropy against the
    # Gaussian is its entropy, against the nearest class -log q(class)
    smooth = JointLoss(77, 3.0, JointLossConfig(label_sigma_months=3.0))(output, age, male)
    hard = JointLoss(77, 3.0, JointLossConfig())(output, age, male)
    assert smooth.terms["age_ce"] == pytest.approx(0.5 * (entropy(q3) + entropy(q100)), rel=1e-4)
    assert hard.terms["age_ce"] == pytest.approx(0.5 * (-math.log(q3[1]) - math.log(q100[33])), rel=1e-4)


def test_the_val_rule_raises_alpha_when_the_val_mad_stops_improving() -> None:
    schedule = AlphaSchedule(1.5, 77.0, window=2, tolerance=0.02, rule="val", val_tolerance=0.02)
    for _ in range(10):  # constant batch losses would raise it under the loss rule, not under this one
        assert schedule.observe(5.0) is False
    # 33.9 -> 30.0 improves by 11.5 %; 30.0 -> 29.8 by 0.67 %, within 2 % of 30.0: raised at the third epoch
    assert [schedule.observe_val(v) for v in (33.9, 30.0)] == [False, False] and schedule.alpha == 1.5
    assert schedule.observe_val(29.8) is True and schedule.alpha == 77.0
    assert schedule.observe_val(29.0) is False and schedule.alpha == 77.0


def test_the_loss_rule_ignores_the_val_mad_and_raises_on_a_stable_batch_loss() -> None:
    schedule = AlphaSchedule(1.5, 77.0, window=2, tolerance=0.02)
    assert [schedule.observe_val(v) for v in (33.9, 33.9, 33.9)] == [False] * 3
    assert [schedule.observe(v) for v in (5.0, 5.0, 5.0, 5.05)] == [False, False, False, True]


def test_the_ramp_rule_raises_alpha_linearly_over_its_steps() -> None:
    schedule = AlphaSchedule(1.5, 77.0, window=50, tolerance=0.02, rule="ramp", ramp_steps=10)
    assert schedule.alpha == 1.5
    for _ in range(4):
        schedule.observe(5.0)
    assert schedule.alpha == pytest.approx(1.5 + 75.5 * 0.4)  # step 4 of 10
    for _ in range(20):
        schedule.observe(5.0)
    assert schedule.alpha == 77.0


def test_the_joint_loss_uses_the_ramped_alpha() -> None:
    loss = JointLoss(77, 3.0, JointLossConfig(alpha_rule="ramp", alpha_ramp_steps=2))
    output = AgeOutput(expected_months=torch.tensor([24.0]), age_logits=torch.zeros(1, 77))
    first = loss(output, torch.tensor([36.0]), torch.tensor([1.0]))
    loss.after_step(first)
    second = loss(output, torch.tensor([36.0]), torch.tensor([1.0]))
    # error 12 months = 1 year: the MAD term is alpha * 1^2, alpha 1.5 then (1.5 + 77) / 2
    assert first.terms["mad_term"] == pytest.approx(1.5) and second.terms["mad_term"] == pytest.approx(39.25)


@pytest.mark.parametrize("changes", [{"alpha_rule": "epoch"}, {"label_sigma_months": -1.0}, {"alpha_ramp_steps": 0},
                                     {"alpha_mad_margin": 1.0}, {"alpha_mad_margin": -0.1}])
def test_a_bad_loss_setting_is_a_config_error(changes) -> None:
    with pytest.raises(ConfigError):
        JointLossConfig(**changes)


def test_the_mad_rule_raises_alpha_once_the_model_beats_the_mean_predictor_by_the_margin() -> None:
    schedule = AlphaSchedule(1.5, 77.0, window=2, tolerance=0.02, rule="mad", mad_margin=0.15)
    # a flat batch loss (which raises alpha under the loss rule) at the mean predictor's MAD: alpha stays down
    assert [schedule.observe(5.0, 34.0, 34.0) for _ in range(10)] == [False] * 10 and schedule.alpha == 1.5
    # window of 2: (34 + 28) / (34 + 34) = 0.91, above 0.85; (28 + 29) / (34 + 34) = 0.84: raised
    assert schedule.observe(5.0, 28.0, 34.0) is False
    assert schedule.observe(5.0, 29.0, 34.0) is True and schedule.alpha == 77.0
    assert schedule.observe(5.0, 40.0, 34.0) is False and schedule.alpha == 77.0
    restored = AlphaSchedule(1.5, 77.0, window=2, tolerance=0.02, rule="mad", mad_margin=0.15)
    restored.load_state_dict(schedule.state_dict())
    assert restored.raised and restored.alpha == 77.0


def test_the_joint_loss_feeds_the_mad_rule_its_batch_mad_and_the_batch_mean_predictor() -> None:
    loss = JointLoss(77, 3.0, JointLossConfig(alpha_rule="mad", window=1, alpha_mad_margin=0.15))
    ages, male = torch.tensor([24.0, 120.0]), torch.tensor([0.0, 1.0])
    at_mean = loss(AgeOutput(expected_months=torch.tensor([72.0, 72.0]), age_logits=torch.zeros(2, 77)), ages, male)
    assert at_mean.terms["mean_predictor_mad"] == pytest.approx(48.0)  # |24 - 72| and |120 - 72|
    assert loss.after_step(at_mean) is False and loss.schedule.alpha == 1.5
    close = loss(AgeOutput(expected_months=torch.tensor([30.0, 110.0]), age_logits=torch.zeros(2, 77)), ages, male)
    assert loss.after_step(close) is True and loss.schedule.alpha == 77.0  # MAD 8 <= 0.85 * 48
