"""Shared set-up of the tiny simulated federations: two phantom sites and an untrained TJ-Net."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from core.checkpoint import describe, save_checkpoint
from core.model.config import TJNetConfig
from core.model.tjnet import TJNet
from sim.phantom.writer import generate_site

TinyFederation = Callable[[Path, int], tuple[Path, dict]]


@pytest.fixture(scope="session")
def tiny_federation() -> TinyFederation:
    """A function (root, n images per site) -> (pretrained checkpoint, forwarded site settings)."""

    def build(root: Path, n: int) -> tuple[Path, dict]:
        sites = [generate_site(p, n, root / p, seed=i + 1, image_size=48) for i, p in enumerate(("rsna", "eu_clinic"))]
        torch.manual_seed(0)
        model = TJNet(TJNetConfig(image_size=48, width=0.25))
        pretrained = save_checkpoint(root / "pretrained.pt", model, describe(model))
        forwarded = {"sim-site-paths": ";".join(str(s) for s in sites), "sim-site-units": "months;months",
                     "device": "cpu"}
        return pretrained, forwarded

    return build
