"""Test-time augmentation: the predicted bone age averaged over small shifts and zooms of the input.

The views of `TTAConfig(shift=s, scale=z)` are the image itself; with s > 0 the image moved by s of its
side left, right, up and down; with z > 0 the image zoomed in and out by z about its centre (1 + z and
1 - z). The predicted age is the mean of the views' expected ages (for a class head that is the expected
value of the mean of the views' class probabilities). No horizontal flip: it would turn a left hand
into a right one. Uncovered pixels take the black background of the model's input squares.

A checkpoint records its setting in metadata["tta"] (`server pretrain` writes `PRETRAIN_TTA` unless told
otherwise: ``--no-tta`` or ``--tta-shift``/``--tta-scale``); a model written from another inherits it
(`core.inputs.InputSettings.inherited`); evaluation, conformal calibration, prediction, acceptance, ensembles and a
site's round metrics and interval counts read it from there (through `core.inputs.InputSettings`), so every path
scores the model the same way.
The sex head's logits are those of the unaugmented image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from core.predict.calibration import calibrate_tensor, calibration_of
from core.data.dataset import NORM_MEAN, NORM_STD
from core.errors import ConfigError
from core.model.heads import AgeOutput

BACKGROUND = (0.0 - NORM_MEAN) / NORM_STD  # a black pixel after normalisation


@dataclass(frozen=True)
class TTAConfig:
    """shift: fraction of the side each shifted view moves (0: none); scale: relative zoom of the zoomed views."""

    shift: float = 0.0
    scale: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.shift < 0.5 or not 0.0 <= self.scale < 1.0:
            raise ConfigError(f"test-time augmentation needs 0 <= shift < 0.5 and 0 <= scale < 1, got {self}")

    @property
    def enabled(self) -> bool:
        return self.shift > 0 or self.scale > 0

    def views(self) -> list[tuple[float, float, float]]:
        """(dx, dy, zoom) of each view; dx, dy in fractions of the side (positive: right, down)."""
        views = [(0.0, 0.0, 1.0)]
        if self.shift > 0:
            s = self.shift
            views += [(-s, 0.0, 1.0), (s, 0.0, 1.0), (0.0, -s, 1.0), (0.0, s, 1.0)]
        if self.scale > 0:
            views += [(0.0, 0.0, 1.0 + self.scale), (0.0, 0.0, 1.0 - self.scale)]
        return views

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


PRETRAIN_TTA = TTAConfig(shift=0.04, scale=0.05)
"""What `server pretrain` records by default: -0.77 [-1.25, -0.29] months for TJ-Net and -0.53 [-0.71, -0.35] for
ResNet-18 at 96 px on rsna100, better on every seed of both (docs/benchmarks.md, "Training recipe"); it costs seven
forward passes per image wherever the checkpoint is scored (not in training or in the federation's rounds)."""


def tta_config_of(metadata: dict[str, Any]) -> TTAConfig:
    """The test-time augmentation a checkpoint asks for (none when its metadata has no "tta")."""
    values = metadata.get("tta") or {}
    return TTAConfig(**{k: float(v) for k, v in values.items() if k in TTAConfig.__dataclass_fields__})


def transform(images: torch.Tensor, dx: float, dy: float, zoom: float) -> torch.Tensor:
    """Move [B, C, H, W] images by (dx, dy) of their side and zoom them by `zoom` about the centre."""
    if (dx, dy, zoom) == (0.0, 0.0, 1.0):
        return images
    theta = torch.tensor([[1.0 / zoom, 0.0, -2.0 * dx], [0.0, 1.0 / zoom, -2.0 * dy]],
                         dtype=torch.float32, device=images.device)
    grid = F.affine_grid(theta.expand(images.shape[0], 2, 3), list(images.shape), align_corners=False)
    moved = F.grid_sample(images.float() - BACKGROUND, grid, mode="bilinear", padding_mode="zeros",
                          align_corners=False)
    return (moved + BACKGROUND).to(images.dtype)


def forward_tta(model: nn.Module, images: torch.Tensor, male: torch.Tensor, config: TTAConfig | None) -> AgeOutput:
    """The model's output, its expected age averaged over the views of `config` (a plain forward without), then
    through the site's calibration when one is attached to the model (`core.predict.calibration`)."""
    views = config.views() if config is not None else [(0.0, 0.0, 1.0)]

    def run_view(index: int) -> AgeOutput:
        if index == 0:  # the identity view: the images as given
            return model(images, male)
        dx, dy, zoom = views[index]
        return model(transform(images, dx, dy, zoom).contiguous(memory_format=_layout(images)), male)

    return mean_of_views(model, run_view, len(views), male)


def mean_of_views(model: nn.Module, run_view: Callable[[int], AgeOutput], n_views: int,
                  male: torch.Tensor) -> AgeOutput:
    """View 0's output with its expected age the mean over `n_views` views (`run_view(i)` gives view i's output),
    then through the site's calibration when one is attached to `model`. Shared by `forward_tta` and the scoring
    through cached frozen-block features (`core.train.feature_scoring`), so both average and calibrate alike."""
    output = run_view(0)
    if n_views > 1:
        total = output.expected_months.float()
        for index in range(1, n_views):
            total = total + run_view(index).expected_months.float()
        output = AgeOutput(expected_months=total / n_views, sex_logits=output.sex_logits)
    if calibration_of(model) is None:
        return output
    return replace(output, expected_months=calibrate_tensor(model, output.expected_months, male))


def _layout(images: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if images.is_contiguous(memory_format=torch.channels_last) and \
        not images.is_contiguous() else torch.contiguous_format
