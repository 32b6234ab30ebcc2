"""What the model looked at: a heat map of block 4 over the radiograph, as in Figure 5 of the TJ-Net paper.

Two maps, both at block 4's resolution before its max-pool (S/16 per side), upsampled to the image:

- ``gradcam`` (default): a class-activation map of block 4 (Grad-CAM, Selvaraju et al., ICCV 2017): block 4's
  feature maps weighted by the mean gradient of the predicted class's logit, summed, negative parts cut. It
  shows where features that raised the predicted bone-age class were found. Works with frozen blocks.
- ``attention``: CBAM3's spatial attention (the sigmoid map block 4 multiplies its features by); only for a
  TJ-Net built with CBAM.

A heat map explains a single prediction; it is not a segmentation and it is not evidence that the model is
right.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
import torch
from PIL import Image
from torch import nn

from core.errors import ConfigError

METHODS = ("gradcam", "attention")


def heat_map(model: nn.Module, image: torch.Tensor, male: float, method: str = "gradcam") -> np.ndarray:
    """Heat map in [0, 1] of shape (S/16, S/16) for one normalised image [1, S, S] and its sex (1 or 0).

    Raises:
        ConfigError: an unknown method, a model without TJ-Net's block 4, or "attention" without CBAM.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown heat-map method {method!r}; expected one of {METHODS}")
    block4 = getattr(model, "block4", None)
    if not isinstance(block4, nn.Sequential) or len(block4) < 3:
        raise ConfigError("heat maps need a TJ-Net (block 4 with its attention module)")
    device = next(model.parameters()).device
    batch = image.unsqueeze(0).to(device)
    sex = torch.tensor([float(male)], device=device)
    was_training = model.training
    model.eval()
    try:
        if method == "attention":
            heat = _spatial_attention(model, block4[2], batch, sex)
        else:
            heat = _grad_cam(model, block4[2], batch, sex)
    finally:
        model.train(was_training)
    top = float(heat.max())
    return (heat / top if top > 0 else heat).astype(np.float32)


def _spatial_attention(model: nn.Module, attention: nn.Module, batch: torch.Tensor, sex: torch.Tensor) -> np.ndarray:
    spatial = getattr(attention, "spatial", None)
    if spatial is None:
        raise ConfigError("this TJ-Net has no CBAM (built with --no-cbam); use the gradcam heat map")
    captured: list[torch.Tensor] = []
    handle = spatial.conv.register_forward_hook(lambda _m, _i, out: captured.append(torch.sigmoid(out.detach())))
    try:
        with torch.inference_mode():
            model(batch, sex)
    finally:
        handle.remove()
    return captured[0][0, 0].float().cpu().numpy()


def _grad_cam(model: nn.Module, attention: nn.Module, batch: torch.Tensor, sex: torch.Tensor) -> np.ndarray:
    captured: list[torch.Tensor] = []

    def keep(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        leaf = output.detach().requires_grad_(True)  # a leaf, so gradients reach it even when blocks are frozen
        captured.append(leaf)
        return leaf

    handle = attention.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            output = model(batch, sex)
            logits = output.age_logits
            target = logits[0, int(torch.argmax(logits[0]))] if logits is not None else output.expected_months[0]
            (gradient,) = torch.autograd.grad(target, captured[0])
    finally:
        handle.remove()
    features = captured[0][0].detach()
    weights = gradient[0].mean(dim=(1, 2), keepdim=True)
    return torch.relu((weights * features).sum(dim=0)).float().cpu().numpy()


def overlay(gray: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 image: the grayscale radiograph (uint8) with the heat map in a jet palette blended on top."""
    height, width = gray.shape
    resized = cv2.resize(heat.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    colours = cv2.applyColorMap(np.clip(resized * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    colours = cv2.cvtColor(colours, cv2.COLOR_BGR2RGB).astype(np.float32)
    base = np.repeat(gray[..., None], 3, axis=2).astype(np.float32)
    weight = alpha * resized[..., None]  # cold parts stay the radiograph, hot parts take the palette
    return np.clip(base * (1 - weight) + colours * weight, 0, 255).astype(np.uint8)


def png_bytes(pixels: np.ndarray) -> bytes:
    """PNG encoding of a grayscale (H, W) or RGB (H, W, 3) uint8 image."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()
