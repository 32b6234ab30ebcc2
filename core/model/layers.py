"""Building blocks of TJ-Net: conv units, CBAM, Inception-ResNet and Inception modules.

All operations are out of place (Opacus' per-sample hooks forbid in-place ops after a
trainable layer) and the CBAM MLP is made of 1x1 convolutions so that every Opacus
grad-sample mode, ghost clipping included, can handle it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

NormFactory = Callable[[int], nn.Module]


def make_norm_factory(kind: str) -> NormFactory:
    """Return a function building the 2-D normalisation layer for `channels` channels."""
    if kind == "batch":
        return nn.BatchNorm2d
    if kind == "group":
        return lambda channels: nn.GroupNorm(_groups_for(channels), channels)
    raise ValueError(f"unknown normalisation {kind!r}")


def _groups_for(channels: int) -> int:
    for groups in (8, 4, 2):
        if channels % groups == 0:
            return groups
    return 1


class ConvUnit(nn.Sequential):
    """Convolution, normalisation, ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int | tuple[int, int],
        norm: NormFactory,
        stride: int = 1,
    ) -> None:
        k = (kernel, kernel) if isinstance(kernel, int) else kernel
        padding = (k[0] // 2, k[1] // 2)
        super().__init__(
            nn.Conv2d(in_channels, out_channels, k, stride=stride, padding=padding, bias=False),
            norm(out_channels),
            nn.ReLU(),
        )


class ChannelAttention(nn.Module):
    """CBAM channel attention: avg- and max-pooled descriptors through one shared MLP."""

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, channels, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(torch.mean(x, dim=(2, 3), keepdim=True))
        peak = self.mlp(torch.amax(x, dim=(2, 3), keepdim=True))
        return x * torch.sigmoid(avg + peak)


class SpatialAttention(nn.Module):
    """CBAM spatial attention: channel-wise mean and max, one 7x7 convolution, sigmoid."""

    def __init__(self, kernel: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel, padding=kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat(
            [torch.mean(x, dim=1, keepdim=True), torch.amax(x, dim=1, keepdim=True)], dim=1
        )
        return x * torch.sigmoid(self.conv(pooled))


class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al., 2018): channel then spatial."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channel = ChannelAttention(channels)
        self.spatial = SpatialAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))


class _ResidualMixer(nn.Module):
    """Concatenate branches, project with a 1x1 conv, add an optional shortcut, ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        branches: list[nn.Module],
        branch_channels: int,
        norm: NormFactory,
        residual: bool,
    ) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)
        self.project = nn.Sequential(
            nn.Conv2d(branch_channels, out_channels, 1, bias=False), norm(out_channels)
        )
        self.shortcut: nn.Module | None = None
        if residual:
            self.shortcut = (
                nn.Identity()
                if in_channels == out_channels
                else nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), norm(out_channels))
            )
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(torch.cat([branch(x) for branch in self.branches], dim=1))
        if self.shortcut is not None:
            y = y + self.shortcut(x)
        return self.act(y)


class IncRes1(_ResidualMixer):
    """Inception-ResNet module 1: 1x1 and 3x3 branches plus a residual shortcut."""

    def __init__(self, in_channels: int, out_channels: int, norm: NormFactory, residual: bool = True) -> None:
        b = max(out_channels // 4, 8)
        branches = [
            ConvUnit(in_channels, b, 1, norm),
            nn.Sequential(ConvUnit(in_channels, b, 1, norm), ConvUnit(b, b, 3, norm)),
            nn.Sequential(ConvUnit(in_channels, b, 1, norm), ConvUnit(b, b, 3, norm), ConvUnit(b, b, 3, norm)),
        ]
        super().__init__(in_channels, out_channels, branches, 3 * b, norm, residual)


class IncRes2(_ResidualMixer):
    """Inception-ResNet module 2: 1x1, 3x3, 1x3 and 3x1 branches plus a residual shortcut."""

    def __init__(self, in_channels: int, out_channels: int, norm: NormFactory, residual: bool = True) -> None:
        b = max(out_channels // 4, 8)
        branches = [
            ConvUnit(in_channels, b, 1, norm),
            nn.Sequential(ConvUnit(in_channels, b, 1, norm), ConvUnit(b, b, 3, norm)),
            nn.Sequential(ConvUnit(in_channels, b, 1, norm), ConvUnit(b, b, (1, 3), norm)),
            nn.Sequential(ConvUnit(in_channels, b, 1, norm), ConvUnit(b, b, (3, 1), norm)),
        ]
        super().__init__(in_channels, out_channels, branches, 4 * b, norm, residual)


class _Concat(nn.Module):
    def __init__(self, branches: list[nn.Module]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.branches], dim=1)


class Inception1(_Concat):
    """Inception module 1: 1x1, 1x1-3x3, 1x1-5x5 and pool-1x1 branches, concatenated."""

    def __init__(self, in_channels: int, out_channels: int, norm: NormFactory) -> None:
        b = out_channels // 4
        super().__init__(
            [
                ConvUnit(in_channels, b, 1, norm),
                nn.Sequential(ConvUnit(in_channels, b, 1, norm), ConvUnit(b, b, 3, norm)),
                nn.Sequential(ConvUnit(in_channels, b, 1, norm), ConvUnit(b, b, 5, norm)),
                nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), ConvUnit(in_channels, b, 1, norm)),
            ]
        )


class Inception2(_Concat):
    """Inception module 2: 1x1, 1x3-3x1, 1x7-7x1 and pool-1x1 branches, concatenated."""

    def __init__(self, in_channels: int, out_channels: int, norm: NormFactory) -> None:
        b = out_channels // 4
        super().__init__(
            [
                ConvUnit(in_channels, b, 1, norm),
                nn.Sequential(ConvUnit(in_channels, b, 1, norm), ConvUnit(b, b, (1, 3), norm), ConvUnit(b, b, (3, 1), norm)),
                nn.Sequential(ConvUnit(in_channels, b, 1, norm), ConvUnit(b, b, (1, 7), norm), ConvUnit(b, b, (7, 1), norm)),
                nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1), ConvUnit(in_channels, b, 1, norm)),
            ]
        )
