"""Tiny TJ-Nets and a synthetic dataset for private-training tests (32 px, width 0.25)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from core.train.loss import JointLoss, JointLossConfig
from core.model.config import TJNetConfig
from core.model.freeze import freeze_blocks
from core.model.tjnet import TJNet
from core.privacy import PrivacyLedger

TINY = TJNetConfig(image_size=32, width=0.25)


class RandomHands(Dataset):
    """`size` random 32 px images with ages in months and sexes, fixed by `seed`."""

    def __init__(self, size: int, seed: int = 1) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(size, 1, 32, 32, generator=generator)
        self.male = (torch.rand(size, generator=generator) > 0.5).float()
        self.age = torch.rand(size, generator=generator) * 220.0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[index], "male": self.male[index], "age": self.age[index]}


def tiny_tjnet(frozen: tuple[int, ...] = (1, 2, 3), norm: str = "group", seed: int = 0) -> TJNet:
    torch.manual_seed(seed)
    model = TJNet(TJNetConfig(image_size=32, width=0.25, norm=norm))
    freeze_blocks(model, frozen)
    return model


def per_sample_loss() -> JointLoss:
    return JointLoss(TINY.num_classes, TINY.class_step_months, JointLossConfig(per_sample=True))


@pytest.fixture
def make_tjnet() -> Callable[..., TJNet]:
    """`make_tjnet(frozen=(1, 2, 3), norm="group", seed=0)`: a tiny TJ-Net with those blocks frozen."""
    return tiny_tjnet


@pytest.fixture
def make_hands() -> Callable[..., RandomHands]:
    return RandomHands


@pytest.fixture
def make_loss() -> Callable[[], JointLoss]:
    return per_sample_loss


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def ledger(tmp_path: Path) -> PrivacyLedger:
    return PrivacyLedger(tmp_path / "state" / "privacy_ledger.jsonl")
