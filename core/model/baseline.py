"""A ResNet-style regression baseline with a sex input and an L1 loss.

This is the recipe of the RSNA 2017 challenge winners (an ImageNet-class backbone, the sex
concatenated to the image features, dense layers, one regression output), scaled by a width
multiplier so it can be trained under the same budget as TJ-Net. Its output head is the regression
head by default and can be any head of `core.model.heads`. `depth=18` uses basic
blocks, `depth=50` bottleneck blocks (the "ResNet-50-style" network of the benchmarks).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from core.errors import ConfigError
from core.model.heads import AgeHead, AgeOutput, make_head, resolve_grid
from core.model.layers import make_norm_factory
from core.model.tjnet import scaled_channels

_STAGES = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3))}


@dataclass(frozen=True)
class ResNetConfig:
    image_size: int = 128
    width: float = 0.5
    depth: int = 18
    norm: str = "group"
    in_channels: int = 1
    dropout: float = 0.2
    head: str = "regression"
    num_classes: int | None = None
    class_step_months: float | None = None

    def __post_init__(self) -> None:
        if self.depth not in _STAGES:
            raise ConfigError(f"depth must be one of {sorted(_STAGES)}, got {self.depth}")
        classes, step = resolve_grid(self.head, self.num_classes, self.class_step_months)
        object.__setattr__(self, "num_classes", classes)
        object.__setattr__(self, "class_step_months", step)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ResNetConfig":
        return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})


class _Basic(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, norm) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(cin, planes, 3, stride, 1, bias=False), norm(planes), nn.ReLU(),
            nn.Conv2d(planes, cout, 3, 1, 1, bias=False), norm(cout),
        )
        self.shortcut = _shortcut(cin, cout, stride, norm)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class _Bottleneck(_Basic):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, norm) -> None:
        nn.Module.__init__(self)
        cout = planes * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(cin, planes, 1, bias=False), norm(planes), nn.ReLU(),
            nn.Conv2d(planes, planes, 3, stride, 1, bias=False), norm(planes), nn.ReLU(),
            nn.Conv2d(planes, cout, 1, bias=False), norm(cout),
        )
        self.shortcut = _shortcut(cin, cout, stride, norm)
        self.act = nn.ReLU()


def _shortcut(cin: int, cout: int, stride: int, norm) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), norm(cout))


class ResNetRegressor(nn.Module):
    """ResNet backbone + sex input (32 units) -> dense 256 -> the head's outputs."""

    def __init__(self, config: ResNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or ResNetConfig()
        cfg = self.config
        norm = make_norm_factory(cfg.norm)
        kind, counts = _STAGES[cfg.depth]
        block = _Basic if kind == "basic" else _Bottleneck
        stem = scaled_channels(64, cfg.width)
        layers: list[nn.Module] = [
            nn.Conv2d(cfg.in_channels, stem, 7, 2, 3, bias=False), norm(stem), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
        ]
        cin = stem
        for stage, count in enumerate(counts):
            planes = scaled_channels(64 * 2**stage, cfg.width)
            for i in range(count):
                layers.append(block(cin, planes, 2 if (i == 0 and stage > 0) else 1, norm))
                cin = planes * block.expansion
        self.backbone = nn.Sequential(*layers)
        self.sex_input = nn.Sequential(nn.Linear(1, 32), nn.ReLU())
        self.output = make_head(cfg.head, cfg.num_classes, cfg.class_step_months)
        self.head = nn.Sequential(
            nn.Dropout(cfg.dropout), nn.Linear(cin + 32, 256), nn.ReLU(), nn.Linear(256, self.output.out_features)
        )

    def forward(self, image: torch.Tensor, male: torch.Tensor) -> AgeOutput:
        features = torch.mean(self.backbone(image), dim=(2, 3))
        sex = male.reshape(-1, 1).to(features.dtype) * 2.0 - 1.0
        return self.output(self.head(torch.cat([features, self.sex_input(sex)], dim=1)))

    @property
    def age_head(self) -> AgeHead:
        return self.output
