"""TJ-Net (Tang, Wu & Shen): a multi-scale CNN with CBAM attention, Inception-ResNet
modules and joint bone-age and sex learning.

Layout (S = input side, w = width multiplier, c(n) = n * w rounded up to a multiple of 8):

| block | modules                                          | output          |
|-------|--------------------------------------------------|-----------------|
| 1     | conv3x3/2, conv3x3, maxpool                      | c(32) x S/4     |
| 2     | conv3x3, conv3x3, CBAM1, maxpool                 | c(64) x S/8     |
| 3     | IncRes1, Inception1, CBAM2, maxpool              | c(128) x S/16   |
| 4     | IncRes2, Inception2, CBAM3, maxpool              | c(256) x S/32   |
| 5     | fusion of blocks 2-4 (GAP) -> 256, sex head -> 2  | 256, 2 logits   |
| 6     | sex input -> 64; [256, 64] -> 512 -> 256 -> K     | K age outputs   |

Block 6 ends in the output head (`core.model.heads`): K = 77 classes of 3 months (paper), 240 of one
month (months) or a single regression output. Each top-level child `block1` ... `block6` is a unit of
freezing (see `freeze.py`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from core.model.config import TJNetConfig
from core.model.heads import AgeHead, AgeOutput, make_head
from core.model.layers import CBAM, ConvUnit, IncRes1, IncRes2, Inception1, Inception2, make_norm_factory

BLOCK_NAMES = ("block1", "block2", "block3", "block4", "block5", "block6")


def scaled_channels(base: int, width: float) -> int:
    """Channels of a block: base * width rounded up to a multiple of 8 (GroupNorm needs it)."""
    return max(8, int(math.ceil(base * width / 8.0)) * 8)


class TJNet(nn.Module):
    """TJ-Net; call as `model(image [B,1,S,S], male [B] in {0,1})`."""

    def __init__(self, config: TJNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or TJNetConfig()
        cfg = self.config
        norm = make_norm_factory(cfg.norm)
        c1, c2, c3, c4 = (scaled_channels(b, cfg.width) for b in (32, 64, 128, 256))
        self.feature_channels = (c2, c3, c4)

        def attention(channels: int) -> nn.Module:
            return CBAM(channels) if cfg.use_cbam else nn.Identity()

        self.block1 = nn.Sequential(
            ConvUnit(cfg.in_channels, c1, 3, norm, stride=2), ConvUnit(c1, c1, 3, norm), nn.MaxPool2d(2)
        )
        self.block2 = nn.Sequential(
            ConvUnit(c1, c2, 3, norm), ConvUnit(c2, c2, 3, norm), attention(c2), nn.MaxPool2d(2)
        )
        self.block3 = nn.Sequential(
            IncRes1(c2, c3, norm, residual=cfg.use_residual), Inception1(c3, c3, norm), attention(c3), nn.MaxPool2d(2)
        )
        self.block4 = nn.Sequential(
            IncRes2(c3, c4, norm, residual=cfg.use_residual), Inception2(c4, c4, norm), attention(c4), nn.MaxPool2d(2)
        )
        self.block5 = FusionBlock(c2 + c3 + c4, cfg.dropout, cfg.joint_sex)
        self.block6 = AgeClassifier(make_head(cfg.head, cfg.num_classes, cfg.class_step_months), cfg.dropout)
        self.frozen_blocks: tuple[int, ...] = ()

    def forward(self, image: torch.Tensor, male: torch.Tensor) -> AgeOutput:
        f1 = self.block1(image)
        f2 = self.block2(f1)
        f3 = self.block3(f2)
        f4 = self.block4(f3)
        pooled = torch.cat([torch.mean(f, dim=(2, 3)) for f in (f2, f3, f4)], dim=1)
        features, sex_logits = self.block5(pooled)
        return self.block6(features, male, sex_logits)

    @property
    def age_head(self) -> AgeHead:
        return self.block6.output

    @property
    def class_centres_months(self) -> torch.Tensor:
        return self.age_head.class_centres_months

    def train(self, mode: bool = True) -> "TJNet":
        """Switch modes, keeping frozen blocks in eval mode (fixed normalisation statistics)."""
        super().train(mode)
        for index in self.frozen_blocks:
            getattr(self, BLOCK_NAMES[index - 1]).eval()
        return self


class FusionBlock(nn.Module):
    """Block 5: fuses pooled multi-scale features into 256 units and predicts sex."""

    def __init__(self, in_features: int, dropout: float, joint_sex: bool) -> None:
        super().__init__()
        self.fuse = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, 256), nn.LayerNorm(256), nn.ReLU())
        self.sex_head = nn.Linear(256, 2) if joint_sex else None

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        features = self.fuse(pooled)
        sex_logits = self.sex_head(features) if self.sex_head is not None else None
        return features, sex_logits


class AgeClassifier(nn.Module):
    """Block 6: image features plus the sex input (64 units), dense 512 and 256, the head's K outputs."""

    def __init__(self, output: AgeHead, dropout: float) -> None:
        super().__init__()
        self.output = output
        self.sex_input = nn.Sequential(nn.Linear(1, 64), nn.ReLU())
        self.head = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(256 + 64, 512),
            nn.ReLU(),
            nn.Linear(512, 256),
            nn.ReLU(),
            nn.Linear(256, output.out_features),
        )

    def forward(self, features: torch.Tensor, male: torch.Tensor, sex_logits: torch.Tensor | None) -> AgeOutput:
        sex = (male.reshape(-1, 1).to(features.dtype) * 2.0) - 1.0
        return self.output(self.head(torch.cat([features, self.sex_input(sex)], dim=1)), sex_logits)
