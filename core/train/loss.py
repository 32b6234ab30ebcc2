"""The losses of the output heads: TJ-Net's joint loss (section 2.3) for the class heads, L1 for regression.

    L = alpha * e^2 + sum_i (1 - |C_i|/|C_t|) H_i(sex) + sum_j (1 - |C_j|/|C_t|) H_j(age)

Choices the paper leaves open, made explicit here:

* e, the mean absolute difference, is computed on the *expected* bone age (the softmax
  probabilities times the class centres), which is differentiable, unlike the arg-max. It is
  measured in years, the unit of the paper's results, so that alpha * e^2 stays comparable
  to the cross-entropy terms.
* H_c is the cross-entropy of the samples of class c in the batch, averaged over those samples;
  the sums run over the classes present in the batch, each weighted by 1 - |C_c| / |C_t| (the
  batch share of the class), which levels the influence of frequent and rare classes.
* alpha starts at 1.5 and is raised to the number of classes once the loss is stable, by
  `AlphaSchedule`, under one of four rules (`alpha_rule`):
  - ``mad`` (the default): once the model's MAD, summed over the last `window` batches, is at most
    1 - `alpha_mad_margin` (0.85) times the MAD of predicting each of those batches' own mean age
    (`terms["mean_predictor_mad"]`). The paper raises alpha "once the loss is stable"; the batch loss
    of a model that gives every image the same age is stable too, and on rsna100 (96 px, lr 1e-3)
    the ``loss`` rule raised alpha at step ~104 of the first epoch while the model predicted the
    per-sex median age (docs/benchmarks.md, "Training recipe"). Alpha was not what held training
    there (the plateau is the same with alpha kept at 1.5), but raising it then is wrong by the
    paper's own intent: this rule waits until the model has learned something from the images;
  - ``loss`` (the default until issue 21): the batch loss is stable when the mean of the last
    `window` batch losses is within `tolerance` (relative) of the mean of the `window` before it;
  - ``val``: at the end of the first epoch whose val MAD improved on the previous epoch's by no more
    than `alpha_val_tolerance` (relative), i.e. the val MAD, not the batch loss, has levelled off;
  - ``ramp``: alpha rises linearly from its start to its final value over `alpha_ramp_steps` steps
    (at step k, counted from 0 before the first update: start + (final - start) * min(k / n, 1)).
  Under ``mad``, ``loss`` and ``val`` the switch happens once.
* `label_sigma_months` > 0 smooths the class targets of the age cross-entropy over neighbouring
  classes: the target of an image of age a is q_k proportional to exp(-(c_k - a)^2 / (2 sigma^2))
  over the class centres c_k, instead of a one-hot on the nearest class (`smoothed_targets`). The
  class weights of the paper's form still count each image in its nearest class.
* `per_sample=True` gives the variant DP-SGD needs: a mean of per-sample terms,
  alpha * (|g_i - p_i| in years)^2 plus the plain cross-entropies, with no batch-dependent class
  weights. The paper's form couples the samples of a batch (e^2 and the class shares), so one
  patient would move the gradient of the others and per-sample clipping would not bound that
  patient's influence.
* The `months` head (240 classes of one month) uses the same loss on its own grid; its alpha rises
  to 77 like the paper's, not to 240, so that the MAD term keeps the paper's weight.
* The `regression` head's loss is the L1 distance between the output and the age scaled to [-1, 1]
  (0 and 228 months at the ends), plus the sex cross-entropy when the model has a sex head.
* `distill_weight` > 0 adds the distillation term of `core.train.distill` (a teacher's per-image class
  probabilities, at temperature `distill_temperature`); the batch must then carry them (``teacher``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.nn import functional as F

from core.errors import ConfigError
from core.train.alpha import ALPHA_RULES, AlphaSchedule
from core.train.distill import kl_to_teacher
from core.model.heads import AgeHead, AgeOutput, RegressionHead


@dataclass(frozen=True)
class JointLossConfig:
    """Settings of the joint loss and of its alpha schedule."""

    alpha_start: float = 1.5
    alpha_final: float | None = None  # None: the number of classes, as in the paper
    alpha_rule: str = "mad"
    window: int = 50
    tolerance: float = 0.02
    alpha_val_tolerance: float = 0.02
    alpha_ramp_steps: int = 500
    alpha_mad_margin: float = 0.15
    label_sigma_months: float = 0.0
    mad_unit_months: float = 12.0
    per_sample: bool = False
    distill_weight: float = 0.0  # 0: no teacher (`core.train.distill`)
    distill_temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.alpha_rule not in ALPHA_RULES:
            raise ConfigError(f"alpha rule must be one of {ALPHA_RULES}, got {self.alpha_rule!r}")
        if self.label_sigma_months < 0 or self.alpha_ramp_steps < 1:
            raise ConfigError("label smoothing sigma must be >= 0 and the alpha ramp at least 1 step")
        if not 0.0 <= self.alpha_mad_margin < 1.0:
            raise ConfigError(f"the alpha MAD margin must be in [0, 1), got {self.alpha_mad_margin}")
        if not (math.isfinite(self.distill_weight) and self.distill_weight >= 0 and self.distill_temperature > 0):
            raise ConfigError(f"distillation needs a weight >= 0 and a temperature > 0, got {self.distill_weight} "
                              f"and {self.distill_temperature}")


def smoothed_targets(age_months: torch.Tensor, num_classes: int, class_step_months: float,
                     sigma_months: float) -> torch.Tensor:
    """[B, K] targets: a Gaussian of width `sigma_months` around each age over the class centres, summing to 1."""
    centres = torch.arange(num_classes, dtype=torch.float32, device=age_months.device) * class_step_months
    distance = centres.unsqueeze(0) - age_months.float().unsqueeze(1)
    return torch.softmax(-distance.pow(2) / (2.0 * sigma_months**2), dim=1)


def class_balanced_cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                                 soft_target: torch.Tensor | None = None) -> torch.Tensor:
    """sum over classes c present of (1 - n_c / B) * mean cross-entropy of the samples of class c.

    With `soft_target` ([B, K] distributions) each sample's cross-entropy is taken against it; `target`
    (the nearest class) still defines the groups and their weights."""
    per_sample = F.cross_entropy(logits.float(), target if soft_target is None else soft_target, reduction="none")
    return class_balanced_mean(per_sample, target)


def class_balanced_mean(per_sample: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """sum over classes c present in `target` of (1 - n_c / B) * the mean of `per_sample` over the class's samples."""
    batch = target.shape[0]
    classes, inverse, counts = torch.unique(target, return_inverse=True, return_counts=True)
    per_class_sum = torch.zeros(classes.shape[0], dtype=per_sample.dtype, device=per_sample.device)
    per_class_sum = per_class_sum.index_add(0, inverse, per_sample)
    weights = 1.0 - counts.to(per_sample.dtype) / batch
    return torch.sum(weights * per_class_sum / counts.to(per_sample.dtype))


@dataclass
class LossParts:
    total: torch.Tensor
    mad_months: float
    terms: dict[str, float]


class JointLoss(nn.Module):
    """TJ-Net's joint loss; `forward(output, age_months, male)` returns `LossParts`."""

    def __init__(self, num_classes: int, class_step_months: float, config: JointLossConfig | None = None) -> None:
        super().__init__()
        self.config = config or JointLossConfig()
        final = self.config.alpha_final if self.config.alpha_final is not None else float(num_classes)
        self.schedule = AlphaSchedule(self.config.alpha_start, final, self.config.window, self.config.tolerance,
                                      self.config.alpha_rule, self.config.alpha_val_tolerance,
                                      self.config.alpha_ramp_steps, self.config.alpha_mad_margin)
        self.num_classes = num_classes
        self.class_step_months = class_step_months

    def age_classes(self, age_months: torch.Tensor) -> torch.Tensor:
        """Nearest class on the grid; ages above the top class go to the top class."""
        index = torch.round(age_months / self.class_step_months).long()
        return torch.clamp(index, 0, self.num_classes - 1)

    def forward(self, output: AgeOutput, age_months: torch.Tensor, male: torch.Tensor,
                teacher: torch.Tensor | None = None) -> LossParts:
        """The joint loss of a batch (plus the distillation term towards `teacher`'s [B, K] class probabilities
        when the config's `distill_weight` > 0)."""
        if output.age_logits is None:
            raise ValueError("the joint loss needs class logits")
        error = torch.abs(output.expected_months - age_months)
        alpha = self.schedule.alpha
        cross_entropy = self._per_sample_ce if self.config.per_sample else class_balanced_cross_entropy
        if self.config.per_sample:
            mad_term = alpha * torch.mean((error / self.config.mad_unit_months) ** 2)
        else:
            mad_term = alpha * (torch.mean(error) / self.config.mad_unit_months) ** 2
        soft = None
        if self.config.label_sigma_months > 0:
            soft = smoothed_targets(age_months, self.num_classes, self.class_step_months, self.config.label_sigma_months)
        classes = self.age_classes(age_months)
        age_term = cross_entropy(output.age_logits, classes, soft)
        total = mad_term + age_term
        terms = {"alpha": alpha, "mad_term": float(mad_term.detach()), "age_ce": float(age_term.detach()),
                 "mean_predictor_mad": float(torch.mean(torch.abs(age_months - torch.mean(age_months.float()))))}
        if output.sex_logits is not None:
            sex_term = cross_entropy(output.sex_logits, male.long())
            total = total + sex_term
            terms["sex_ce"] = float(sex_term.detach())
        if self.config.distill_weight > 0:
            distill_term = self._distill(output.age_logits, classes, teacher)
            total = total + distill_term
            terms["distill"] = float(distill_term.detach())
        return LossParts(total=total, mad_months=float(torch.mean(error).detach()), terms=terms)

    def _distill(self, logits: torch.Tensor, classes: torch.Tensor, teacher: torch.Tensor | None) -> torch.Tensor:
        if teacher is None:
            raise ValueError("distillation is on (distill_weight > 0) but the batch carries no teacher targets")
        temperature = self.config.distill_temperature
        divergence = kl_to_teacher(logits, teacher, temperature)
        reduced = divergence.mean() if self.config.per_sample else class_balanced_mean(divergence, classes)
        return self.config.distill_weight * temperature**2 * reduced

    @staticmethod
    def _per_sample_ce(logits: torch.Tensor, target: torch.Tensor,
                       soft_target: torch.Tensor | None = None) -> torch.Tensor:
        return F.cross_entropy(logits.float(), target if soft_target is None else soft_target)

    def after_step(self, parts: LossParts) -> bool:
        """Feed the schedule with a training batch loss; True when alpha was just raised."""
        return self.schedule.observe(float(parts.total.detach()), parts.mad_months, parts.terms["mean_predictor_mad"])

    def after_epoch(self, val_mad: float) -> bool:
        """Feed the schedule with an epoch's val MAD; True when alpha was just raised."""
        return self.schedule.observe_val(val_mad)


class RegressionLoss(nn.Module):
    """L1 between the regression output and the age scaled to [-1, 1], plus the sex cross-entropy."""

    def __init__(self, head: RegressionHead, config: JointLossConfig | None = None) -> None:
        super().__init__()
        self.head = head
        self.config = config or JointLossConfig()

    def forward(self, output: AgeOutput, age_months: torch.Tensor, male: torch.Tensor) -> LossParts:
        if output.scaled is None:
            raise ValueError("the regression loss needs a regression output")
        total = torch.mean(torch.abs(output.scaled - self.head.scale(age_months)))
        terms = {"l1_scaled": float(total.detach())}
        if output.sex_logits is not None:
            sex_term = (F.cross_entropy(output.sex_logits.float(), male.long()) if self.config.per_sample
                        else class_balanced_cross_entropy(output.sex_logits, male.long()))
            total = total + sex_term
            terms["sex_ce"] = float(sex_term.detach())
        error = torch.abs(output.expected_months - age_months)
        return LossParts(total=total, mad_months=float(torch.mean(error).detach()), terms=terms)

    def after_step(self, parts: LossParts) -> bool:
        return False

    def after_epoch(self, val_mad: float) -> bool:
        return False


PAPER_ALPHA_FINAL = 77.0


def _joint(head: AgeHead, config: JointLossConfig) -> nn.Module:
    if head.name == "months" and config.alpha_final is None:
        config = replace(config, alpha_final=PAPER_ALPHA_FINAL)
    return JointLoss(head.num_classes, head.class_step_months, config)


def _regression(head: AgeHead, config: JointLossConfig) -> nn.Module:
    if not isinstance(head, RegressionHead):
        raise ValueError(f"head {head.name!r} is not a regression head")
    return RegressionLoss(head, config)


LOSSES = {"paper": _joint, "months": _joint, "regression": _regression}


def make_head_loss(head: AgeHead, config: JointLossConfig | None = None) -> nn.Module:
    """The loss that trains `head` (see the module docstring)."""
    return LOSSES[head.name](head, config or JointLossConfig())


def make_loss(model: nn.Module, config: JointLossConfig | None = None) -> nn.Module:
    """The loss of `model`'s output head (its `age_head`)."""
    return make_head_loss(model.age_head, config)
