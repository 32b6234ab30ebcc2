"""Bone age of unlabelled images: the model input of one radiograph and a batched forward pass.

A patient's sex is an input of TJ-Net's age classifier (block 6). When it is unknown (NaN), the sex
TJ-Net's own head predicts (block 5, which does not depend on the sex input) is fed instead; the caller
learns which images that was, and the head's probability, so it can say so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from core.data.dataset import NORM_MEAN, NORM_STD, fit_to_square
from core.errors import ConfigError
from core.predict.tta import TTAConfig, forward_tta


class NoSexHeadError(ConfigError):
    """A patient of unknown sex and a model without a sex head to predict it."""


@dataclass(frozen=True)
class BatchPrediction:
    """Per image of a batch.

    Attributes:
        expected_months: predicted bone age (expected value over the class grid).
        male_used: the sex fed to the age classifier (1 male, 0 female).
        sex_from_head: True where the sex was unknown and came from the sex head.
        p_male: the sex head's probability of male (NaN for a model without a sex head).
    """

    expected_months: np.ndarray
    male_used: np.ndarray
    sex_from_head: np.ndarray
    p_male: np.ndarray


def model_input(pixels: np.ndarray, image_size: int) -> tuple[np.ndarray, torch.Tensor]:
    """The uint8 square the model sees (as in evaluation) and its normalised [1, S, S] tensor."""
    square = fit_to_square(pixels, image_size, image_size)
    tensor = torch.from_numpy(square).float().div_(255.0).sub_(NORM_MEAN).div_(NORM_STD).unsqueeze(0)
    return square, tensor


def predict_batch(model: nn.Module, images: torch.Tensor, male: torch.Tensor, device: torch.device,
                  tta: TTAConfig | None = None) -> BatchPrediction:
    """Predict a batch [B, 1, S, S]; ``male`` holds 1, 0 or NaN (unknown: taken from the sex head); the age is
    averaged over the views of `tta` (`core.predict.tta`) when given.

    Raises:
        NoSexHeadError: some sex is unknown and the model has no sex head.
    """
    was_training = model.training
    model.eval()
    images = images.to(device)
    unknown = torch.isnan(male)
    with torch.inference_mode():
        given = torch.where(unknown, torch.zeros_like(male), male).to(device)
        if bool(unknown.any()):  # the sex head ignores the sex input: one plain pass for it, the views only after
            sex_logits = model(images, given).sex_logits
            if sex_logits is None:
                raise NoSexHeadError("the sex is unknown and this model has no sex head to predict it; give the sex")
            p_male = torch.softmax(sex_logits.float(), dim=1)[:, 1].cpu()
            used = torch.where(unknown, (p_male >= 0.5).float(), male)
            output = forward_tta(model, images, used.to(device), tta)
        else:
            output, used = forward_tta(model, images, given, tta), male
            p_male = (torch.full((len(male),), float("nan")) if output.sex_logits is None else
                      torch.softmax(output.sex_logits.float(), dim=1)[:, 1].cpu())
    model.train(was_training)
    return BatchPrediction(output.expected_months.float().cpu().numpy(), used.numpy(), unknown.numpy(),
                           p_male.numpy())
