"""Output heads shared by TJ-Net and the ResNet-style baseline.

A head turns the raw outputs of a model's last linear layer into an `AgeOutput` (the bone age in
months, plus class logits where there are classes). The last linear layer itself stays in the model
(block 6 of TJ-Net, `head` of the baseline), so a head adds no parameters and freezing and federation
see the same blocks whatever the head.

| head         | outputs | bone age                                         | loss (core/train/loss.py)                 |
|--------------|---------|--------------------------------------------------|-------------------------------------|
| `paper`      | 77      | expected value over classes of 3 months (0-228)  | the paper's joint loss              |
| `months`     | 240     | expected value over classes of 1 month (0-239)   | the joint loss on the 1-month grid  |
| `regression` | 1       | y in [-1, 1] mapped linearly onto 0-228 months   | L1 on the age scaled to [-1, 1]     |

How the output starts (`init_age_head`, `server pretrain --head-init`): ``prior`` (the default of
pretraining) sets the bias of the last linear layer so that an untrained class head's softmax is the training
ages' class frequencies (a regression head: their mean age), instead of the uniform softmax over 77 classes
(expected age 114 months, and a cross-entropy that first has to learn the age distribution). It is the
standard start for a classifier over unbalanced classes; on rsna100 it did not by itself end the mean-age
plateau (docs/benchmarks.md, "Training recipe": the learning rate did), but it costs nothing and starts the
model at the mean predictor rather than 11-13 months from it.

The regression head keeps the paper's grid (77 classes of 3 months) only to define its age range
(0 to 228 months) and the class accuracy reported by `core.stats.metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from core.errors import ConfigError

# name -> (number of classes, class width in months) used when a config leaves them unset
DEFAULT_GRIDS: dict[str, tuple[int, float]] = {"paper": (77, 3.0), "months": (240, 1.0), "regression": (77, 3.0)}
HEAD_NAMES = tuple(DEFAULT_GRIDS)


@dataclass
class AgeOutput:
    """What a bone-age model returns for a batch.

    Attributes:
        expected_months: [B] expected bone age over the class grid (or the regression value).
        age_logits: [B, K] class logits, None for a regression head.
        sex_logits: [B, 2] logits of the joint sex head, None when it is switched off.
        scaled: [B] the regression output in [-1, 1] units, None for a class head.
    """

    expected_months: torch.Tensor
    age_logits: torch.Tensor | None = None
    sex_logits: torch.Tensor | None = None
    scaled: torch.Tensor | None = None

    @property
    def probabilities(self) -> torch.Tensor:
        if self.age_logits is None:
            raise ValueError("a regression output has no class probabilities")
        return torch.softmax(self.age_logits.float(), dim=1)

    @property
    def predicted_class(self) -> torch.Tensor:
        if self.age_logits is None:
            raise ValueError("a regression output has no classes")
        return torch.argmax(self.age_logits, dim=1)


def resolve_grid(head: str, num_classes: int | None, class_step_months: float | None) -> tuple[int, float]:
    """The class grid of `head`: the given values, or the head's defaults where they are None."""
    if head not in DEFAULT_GRIDS:
        raise ConfigError(f"head must be one of {HEAD_NAMES}, got {head!r}")
    default_classes, default_step = DEFAULT_GRIDS[head]
    classes = default_classes if num_classes is None else int(num_classes)
    step = default_step if class_step_months is None else float(class_step_months)
    if classes < 2:
        raise ConfigError(f"num_classes must be at least 2, got {classes}")
    if step <= 0:
        raise ConfigError(f"class_step_months must be positive, got {step}")
    return classes, step


class AgeHead(nn.Module):
    """Base of the heads: a class grid (centres k * step months, k = 0..K-1) and its age range."""

    name = ""

    def __init__(self, num_classes: int, class_step_months: float) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.class_step_months = class_step_months
        self.register_buffer("class_centres_months",
                             torch.arange(num_classes, dtype=torch.float32) * class_step_months, persistent=False)

    @property
    def max_months(self) -> float:
        """Centre of the top class: the top of the age range."""
        return (self.num_classes - 1) * self.class_step_months

    @property
    def out_features(self) -> int:
        raise NotImplementedError

    def forward(self, raw: torch.Tensor, sex_logits: torch.Tensor | None = None) -> AgeOutput:
        raise NotImplementedError


class ClassHead(AgeHead):
    """K class logits; the bone age is the expected value of the softmax over the class centres."""

    @property
    def out_features(self) -> int:
        return self.num_classes

    def forward(self, raw: torch.Tensor, sex_logits: torch.Tensor | None = None) -> AgeOutput:
        probabilities = torch.softmax(raw.float(), dim=1)
        return AgeOutput(expected_months=probabilities @ self.class_centres_months, age_logits=raw,
                         sex_logits=sex_logits)


class RegressionHead(AgeHead):
    """One output y; the bone age is (y + 1) / 2 * max_months, so [-1, 1] spans 0 to max_months."""

    @property
    def out_features(self) -> int:
        return 1

    def scale(self, age_months: torch.Tensor) -> torch.Tensor:
        """Age in months -> the regression target in [-1, 1]."""
        return age_months / self.max_months * 2.0 - 1.0

    def forward(self, raw: torch.Tensor, sex_logits: torch.Tensor | None = None) -> AgeOutput:
        scaled = raw.float().reshape(-1)
        return AgeOutput(expected_months=(scaled + 1.0) * 0.5 * self.max_months, sex_logits=sex_logits,
                         scaled=scaled)


HEAD_INITS = ("uniform", "prior")
DEFAULT_HEAD_INIT = "prior"  # what pretraining uses (docs/benchmarks.md, "Training recipe")


def output_layer(model: nn.Module) -> nn.Linear:
    """The model's last linear layer, whose outputs its age head reads (block 6 of TJ-Net, `head` of the baseline)."""
    layers = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == model.age_head.out_features]
    if not layers:
        raise ValueError("the model has no linear layer feeding its age head")
    return layers[-1]


@torch.no_grad()
def init_age_head(model: nn.Module, how: str, train_ages_months: np.ndarray) -> None:
    """Start the model's output at the training ages' prior (`how` = "prior") or leave it as built ("uniform").

    "prior" sets the bias of the last linear layer so that, before any training, a class head's softmax is the
    training split's class frequencies (bias = log of the frequencies, one pseudo-count per class so that no
    class starts at -inf) and a regression head outputs the training split's mean age. The weights stay as
    built, so the images still move the logits around that start.
    """
    if how not in HEAD_INITS:
        raise ConfigError(f"head init must be one of {HEAD_INITS}, got {how!r}")
    ages = np.asarray(train_ages_months, dtype=np.float64)
    if how == "uniform" or ages.size == 0:
        return
    head, layer = model.age_head, output_layer(model)
    if isinstance(head, RegressionHead):
        layer.bias.fill_(float(head.scale(torch.tensor(float(ages.mean())))))
        return
    classes = np.clip(np.rint(ages / head.class_step_months), 0, head.num_classes - 1).astype(np.int64)
    counts = np.bincount(classes, minlength=head.num_classes) + 1.0
    layer.bias.copy_(torch.as_tensor(np.log(counts / counts.sum()), dtype=layer.bias.dtype))


HEADS: dict[str, type[AgeHead]] = {"paper": ClassHead, "months": ClassHead, "regression": RegressionHead}


def make_head(name: str, num_classes: int, class_step_months: float) -> AgeHead:
    """The head called `name` on the given class grid."""
    classes, step = resolve_grid(name, num_classes, class_step_months)
    head = HEADS[name](classes, step)
    head.name = name
    return head
