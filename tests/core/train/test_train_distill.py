"""The distillation term of the joint loss and the teacher-targets file (core.train.distill)."""

import math

import numpy as np
import pytest
import torch

from core.data.config import DataError
from core.errors import ConfigError
from core.model.heads import AgeOutput
from core.train.distill import TeacherTargets, WithTeacher, kl_to_teacher
from core.train.loss import JointLoss, JointLossConfig

CENTRES = torch.tensor([0.0, 12.0, 24.0])
AGES = torch.tensor([0.0, 12.0, 12.0])  # classes 0, 1, 1 on a 12-month grid
MALE = torch.tensor([0.0, 1.0, 1.0])


def _output(logits: torch.Tensor) -> AgeOutput:
    return AgeOutput(expected_months=torch.softmax(logits, 1) @ CENTRES, age_logits=logits)


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_the_term_is_zero_when_the_student_is_the_teacher_and_grows_as_it_moves_away(temperature):
    teacher_logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0], [-1.0, 0.5, 3.0]])
    teacher = torch.softmax(teacher_logits, 1)
    assert torch.allclose(kl_to_teacher(teacher_logits, teacher, temperature), torch.zeros(3), atol=1e-6)
    away = torch.tensor([[0.0, 0.0, 4.0], [3.0, 0.0, 0.0], [4.0, 0.0, 0.0]])
    divergences = [float(kl_to_teacher(teacher_logits + step * away, teacher, temperature).sum())
                   for step in (0.0, 0.25, 0.5, 1.0)]
    assert divergences[0] == pytest.approx(0.0, abs=1e-6)
    assert all(a < b for a, b in zip(divergences, divergences[1:])), divergences


def test_the_term_is_the_kl_divergence_at_the_temperature_by_hand():
    logits, teacher = torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.5, 0.25, 0.25]])
    t = 2.0
    q = [v ** (1 / t) for v in (0.5, 0.25, 0.25)]
    q = [v / sum(q) for v in q]
    p = [math.exp(v / t) for v in (1.0, 0.0, 0.0)]
    p = [v / sum(p) for v in p]
    assert float(kl_to_teacher(logits, teacher, t)[0]) == pytest.approx(sum(a * math.log(a / b) for a, b in zip(q, p)))


def test_the_joint_loss_adds_the_weighted_class_balanced_term_and_needs_the_teacher():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    teacher = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.6, 0.2], [0.1, 0.7, 0.2]])
    plain = JointLoss(3, 12.0, JointLossConfig())(_output(logits), AGES, MALE)
    distilled_loss = JointLoss(3, 12.0, JointLossConfig(distill_weight=3.0, distill_temperature=2.0))
    distilled = distilled_loss(_output(logits), AGES, MALE, teacher)
    kl = kl_to_teacher(logits, teacher, 2.0)
    by_hand = 3.0 * 4.0 * ((1 - 1 / 3) * kl[0] + (1 - 2 / 3) * (kl[1] + kl[2]) / 2)  # classes 0 and 1 weighted
    assert float(distilled.total - plain.total) == pytest.approx(float(by_hand), rel=1e-5)
    assert distilled.terms["distill"] == pytest.approx(float(by_hand), rel=1e-5)
    assert "distill" not in plain.terms
    same = distilled_loss(_output(logits), AGES, MALE, torch.softmax(logits, 1))
    assert same.terms["distill"] == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(ValueError, match="no teacher targets"):
        distilled_loss(_output(logits), AGES, MALE)


@pytest.mark.parametrize("weight, temperature", [(-1.0, 1.0), (1.0, 0.0), (float("nan"), 1.0)])
def test_bad_distillation_settings_are_refused(weight, temperature):
    with pytest.raises(ConfigError, match="distillation"):
        JointLossConfig(distill_weight=weight, distill_temperature=temperature)


def _targets() -> TeacherTargets:
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], dtype=np.float32)
    return TeacherTargets(("a", "b"), probabilities, probabilities @ np.array([0.0, 12.0, 24.0]), 12.0, {"members": ["m"]})


def test_targets_round_trip_and_align_by_image_id(tmp_path):
    path = _targets().save(tmp_path / "teacher.npz")
    loaded = TeacherTargets.load(path)
    assert loaded.image_ids == ("a", "b") and loaded.num_classes == 3 and loaded.metadata["members"] == ["m"]
    np.testing.assert_allclose(loaded.aligned(["b", "a"]), _targets().probabilities[[1, 0]])
    with pytest.raises(DataError, match="no row for 1 of the 2 training images .*'c'"):
        loaded.aligned(["a", "c"])
    with pytest.raises(ConfigError, match="not the student's"):
        loaded.check_grid(77, 3.0)


def test_a_file_that_is_not_teacher_targets_is_a_one_line_error(tmp_path):
    (tmp_path / "text.npz").write_text("not an archive")
    np.savez(tmp_path / "other.npz", x=np.zeros(2))
    bad = _targets()
    bad = TeacherTargets(bad.image_ids, bad.probabilities * 2, bad.ages_months, 12.0, {})
    bad.save(tmp_path / "bad.npz")
    for name, message in (("text.npz", "not a teacher-targets file"), ("other.npz", "not a teacher-targets file"),
                          ("missing.npz", "not a teacher-targets file"), ("bad.npz", "not distributions")):
        with pytest.raises(ConfigError, match=message) as caught:
            TeacherTargets.load(tmp_path / name)
        assert "\n" not in str(caught.value)


class _Split:
    """A stand-in for a training split: records with ids, items, and the epoch it was told."""

    def __init__(self, ids: list[str]) -> None:
        self.records = [type("Record", (), {"image_id": image_id})() for image_id in ids]
        self.epochs: list[int] = []

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)

    def __getitem__(self, index: int) -> dict:
        return {"image": torch.full((1,), float(index)), "epoch": self.epochs[-1] if self.epochs else None}


def test_items_carry_their_own_images_teacher_row_and_the_epoch_reaches_the_split():
    split = _Split(["b", "a"])
    items = WithTeacher(split, _targets())
    assert len(items) == 2
    items.set_epoch(3)  # the split draws this epoch's augmentations: a wrapper that drops it repeats one epoch's
    assert split.epochs == [3] and items[0]["epoch"] == 3
    np.testing.assert_allclose(items[0]["teacher"].numpy(), _targets().probabilities[1])  # "b" is row 1 of the file
    np.testing.assert_allclose(items[1]["teacher"].numpy(), _targets().probabilities[0])
    assert float(items[1]["image"][0]) == 1.0
