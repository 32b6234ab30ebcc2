"""The joint loss against values computed by hand, and the alpha stability rule."""

import math

import pytest
import torch

from core.train.alpha import AlphaSchedule
from core.train.loss import JointLoss, JointLossConfig, RegressionLoss, class_balanced_cross_entropy, make_head_loss
from core.model.heads import AgeOutput, make_head


def _softmax(row):
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


AGE_LOGITS = [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0]]
SEX_LOGITS = [[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]]
AGES = [0.0, 12.0, 12.0]  # classes 0, 1, 1 on a 12-month grid
MALE = [0.0, 1.0, 1.0]
CENTRES = [0.0, 12.0, 24.0]


def _output() -> AgeOutput:
    logits = torch.tensor(AGE_LOGITS)
    expected = torch.softmax(logits, 1) @ torch.tensor(CENTRES)
    return AgeOutput(expected_months=expected, age_logits=logits, sex_logits=torch.tensor(SEX_LOGITS))


def _by_hand(alpha: float) -> float:
    p = [_softmax(r) for r in AGE_LOGITS]
    expected = [sum(pi * c for pi, c in zip(row, CENTRES)) for row in p]
    e_years = sum(abs(x - g) for x, g in zip(expected, AGES)) / 3 / 12
    age_ce = (1 - 1 / 3) * -math.log(p[0][0]) + (1 - 2 / 3) * (-math.log(p[1][1]) - math.log(p[2][1])) / 2
    s = [_softmax(r) for r in SEX_LOGITS]
    sex_ce = (1 - 1 / 3) * -math.log(s[0][0]) + (1 - 2 / 3) * (-math.log(s[1][1]) - math.log(s[2][1])) / 2
    return alpha * e_years**2 + age_ce + sex_ce


def test_joint_loss_matches_the_hand_computed_value():
    loss = JointLoss(num_classes=3, class_step_months=12.0)
    parts = loss(_output(), torch.tensor(AGES), torch.tensor(MALE))
    assert parts.total.item() == pytest.approx(_by_hand(1.5), rel=1e-5)
    assert parts.terms["alpha"] == 1.5


def test_raised_alpha_uses_the_number_of_classes():
    loss = JointLoss(num_classes=3, class_step_months=12.0)
    loss.schedule.raised = True
    parts = loss(_output(), torch.tensor(AGES), torch.tensor(MALE))
    assert parts.total.item() == pytest.approx(_by_hand(3.0), rel=1e-5)


def test_class_weights_vanish_for_a_single_class_batch():
    logits = torch.tensor([[1.0, 0.0], [0.5, 0.2]])
    assert class_balanced_cross_entropy(logits, torch.tensor([0, 0])).item() == 0.0


def test_loss_without_sex_head_drops_the_sex_term():
    out = _output()
    out.sex_logits = None
    parts = JointLoss(3, 12.0)(out, torch.tensor(AGES), torch.tensor(MALE))
    assert "sex_ce" not in parts.terms


def test_per_sample_variant_is_a_mean_of_independent_terms():
    loss = JointLoss(3, 12.0, JointLossConfig(per_sample=True))
    full = loss(_output(), torch.tensor(AGES), torch.tensor(MALE)).total.item()
    singles = []
    for i in range(3):
        o = _output()
        single = AgeOutput(o.expected_months[i:i + 1], o.age_logits[i:i + 1], o.sex_logits[i:i + 1])
        singles.append(loss(single, torch.tensor(AGES[i:i + 1]), torch.tensor(MALE[i:i + 1])).total.item())
    assert full == pytest.approx(sum(singles) / 3, rel=1e-5)


def test_mad_term_is_differentiable_through_the_expected_value():
    logits = torch.tensor(AGE_LOGITS, requires_grad=True)
    expected = torch.softmax(logits, 1) @ torch.tensor(CENTRES)
    out = AgeOutput(expected_months=expected, age_logits=logits, sex_logits=None)
    JointLoss(3, 12.0)(out, torch.tensor(AGES), torch.tensor(MALE)).total.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_ages_above_the_grid_go_to_the_top_class():
    loss = JointLoss(77, 3.0)
    assert loss.age_classes(torch.tensor([0.0, 4.0, 229.0, 240.0])).tolist() == [0, 1, 76, 76]


def test_alpha_is_raised_once_when_the_batch_loss_plateaus():
    schedule = AlphaSchedule(start=1.5, final=77.0, window=2, tolerance=0.1)
    assert [schedule.observe(v) for v in (10, 8, 6, 5.5)] == [False] * 4  # still falling: 9 -> 5.75
    assert schedule.alpha == 1.5
    assert schedule.observe(5.4) is False  # windows (8, 6) -> (5.5, 5.4): 7 -> 5.45, a 22 % drop
    assert schedule.observe(5.4) is True  # (6, 5.5) -> (5.4, 5.4): 5.75 -> 5.4, a 6 % drop, under 10 %
    assert schedule.raised and schedule.alpha == 77.0
    assert schedule.observe(100.0) is False and schedule.alpha == 77.0


def test_alpha_stays_down_while_the_loss_keeps_falling():
    schedule = AlphaSchedule(start=1.5, final=77.0, window=3, tolerance=0.01)
    for step in range(50):
        schedule.observe(100.0 * 0.9**step)
    assert not schedule.raised


def test_schedule_state_round_trips():
    schedule = AlphaSchedule(1.5, 77.0, 2, 0.1)
    for v in (3.0, 3.0, 3.0):
        schedule.observe(v)
    restored = AlphaSchedule(1.5, 77.0, 2, 0.1)
    restored.load_state_dict(schedule.state_dict())
    assert restored.observe(3.0) is True and restored.alpha == 77.0


def test_regression_loss_is_l1_on_the_age_scaled_to_minus_one_one():
    head = make_head("regression", 77, 3.0)  # 0 and 228 months at -1 and +1
    out = head(torch.tensor([[0.0], [0.5]]))  # 114 and 171 months
    parts = RegressionLoss(head)(out, torch.tensor([57.0, 228.0]), torch.tensor([0.0, 1.0]))
    # targets -0.5 and 1.0: |0 - (-0.5)| = 0.5, |0.5 - 1| = 0.5
    assert parts.total.item() == pytest.approx(0.5)
    assert parts.mad_months == pytest.approx(57.0)
    assert "sex_ce" not in parts.terms


def test_regression_loss_adds_the_class_balanced_sex_term():
    head = make_head("regression", 77, 3.0)
    sex_logits = torch.tensor(SEX_LOGITS)
    out = head(torch.tensor([[-1.0], [0.0], [1.0]]), sex_logits)
    parts = RegressionLoss(head)(out, torch.tensor([0.0, 114.0, 228.0]), torch.tensor(MALE))
    s = [_softmax(r) for r in SEX_LOGITS]
    sex_ce = (1 - 1 / 3) * -math.log(s[0][0]) + (1 - 2 / 3) * (-math.log(s[1][1]) - math.log(s[2][1])) / 2
    assert parts.total.item() == pytest.approx(sex_ce, rel=1e-5)


@pytest.mark.parametrize("name, kind, alpha_final", [("paper", JointLoss, 77.0), ("months", JointLoss, 77.0),
                                                     ("regression", RegressionLoss, None)])
def test_each_head_gets_its_loss(name, kind, alpha_final):
    loss = make_head_loss(make_head(name, None, None))
    assert isinstance(loss, kind)
    if alpha_final is not None:
        assert loss.schedule.final == alpha_final
        assert loss.num_classes == {"paper": 77, "months": 240}[name]


def test_months_head_loss_matches_the_hand_computed_value():
    head = make_head("months", 3, 12.0)  # a 3-class grid stands in for the 240 classes
    loss = make_head_loss(head)
    parts = loss(_output(), torch.tensor(AGES), torch.tensor(MALE))
    assert parts.total.item() == pytest.approx(_by_hand(1.5), rel=1e-5)
    loss.schedule.raised = True
    assert loss(_output(), torch.tensor(AGES), torch.tensor(MALE)).total.item() == pytest.approx(_by_hand(77.0), rel=1e-5)
