"""The hook-based FLOP counter of bench.bench_model on layers whose cost is known by hand."""

from __future__ import annotations

import torch
from torch import nn

from bench.bench_model import count_flops


class _Pair(nn.Module):
    """A module called like TJ-Net: (image, male)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=4)
        self.fc = nn.Linear(8, 5)

    def forward(self, image: torch.Tensor, male: torch.Tensor) -> torch.Tensor:
        return self.fc(self.grouped(self.conv(image)).mean(dim=(2, 3)))


def test_count_flops_matches_hand_count_for_conv_grouped_conv_and_linear() -> None:
    image, male = torch.zeros(2, 3, 10, 10), torch.zeros(2)
    conv = 2 * (2 * 8 * 10 * 10) * 3 * 9
    grouped = 2 * (2 * 8 * 10 * 10) * (8 // 4) * 9
    linear = 2 * 2 * 8 * 5
    assert count_flops(_Pair(), (image, male)) == conv + grouped + linear


def test_count_flops_removes_its_hooks() -> None:
    model = _Pair()
    count_flops(model, (torch.zeros(1, 3, 4, 4), torch.zeros(1)))
    assert all(not m._forward_hooks for m in model.modules())
