"""Heat maps of block 4: Grad-CAM and CBAM spatial attention, and their overlay."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from core.errors import ConfigError
from core.predict.explain import heat_map, overlay, png_bytes
from core.model.config import TJNetConfig
from core.model.freeze import freeze_blocks
from core.model.tjnet import TJNet


def model(**config: object) -> TJNet:
    torch.manual_seed(0)
    return TJNet(TJNetConfig(image_size=64, width=0.25, **config))


def image() -> torch.Tensor:
    y, x = np.mgrid[0:64, 0:64] / 64.0
    blob = np.exp(-((y - 0.3) ** 2 + (x - 0.6) ** 2) * 30)
    return torch.from_numpy(((blob - 0.5) / 0.25).astype(np.float32))[None]


@pytest.mark.parametrize("method", ["gradcam", "attention"])
def test_heat_map_is_block4_sized_and_normalised(method: str) -> None:
    heat = heat_map(model(), image(), 1.0, method)
    assert heat.shape == (4, 4) and heat.dtype == np.float32  # 64 px / 16
    assert heat.min() >= 0 and heat.max() == pytest.approx(1.0)
    assert heat.std() > 0


def test_gradcam_follows_the_image_and_works_with_frozen_blocks() -> None:
    net = model()
    before = heat_map(net, image(), 0.0)
    freeze_blocks(net, (1, 2, 3, 4))
    assert np.allclose(heat_map(net, image(), 0.0), before, atol=1e-5)
    assert not np.allclose(heat_map(net, torch.flip(image(), dims=(2,)), 0.0), before, atol=1e-3)
    assert all(p.grad is None for p in net.parameters())


def test_attention_needs_cbam_and_unknown_methods_fail() -> None:
    with pytest.raises(ConfigError, match="no CBAM"):
        heat_map(model(use_cbam=False), image(), 1.0, "attention")
    with pytest.raises(ConfigError, match="unknown heat-map method"):
        heat_map(model(), image(), 1.0, "saliency")


def test_overlay_keeps_cold_regions_and_encodes_png() -> None:
    gray = np.full((32, 32), 100, dtype=np.uint8)
    heat = np.zeros((4, 4), dtype=np.float32)
    heat[0, 0] = 1.0
    rgb = overlay(gray, heat)
    assert rgb.shape == (32, 32, 3)
    assert np.all(rgb[-1, -1] == 100) and not np.all(rgb[0, 0] == 100)
    decoded = np.asarray(Image.open(io.BytesIO(png_bytes(rgb))))
    assert np.array_equal(decoded, rgb)
