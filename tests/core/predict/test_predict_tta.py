"""Test-time augmentation: the views, a one-pixel shift by hand, and the averaged age."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.errors import ConfigError
from core.model.heads import AgeOutput
from core.predict.tta import BACKGROUND, TTAConfig, forward_tta, transform, tta_config_of


class TopLeftPixel(nn.Module):
    """A stand-in model: the 'age' is the top-left pixel; the sex logits say which view it saw."""

    def forward(self, images: torch.Tensor, male: torch.Tensor) -> AgeOutput:
        return AgeOutput(expected_months=images[:, 0, 0, 0], sex_logits=images[:, 0, :2, 0])


def test_the_views_are_identity_four_shifts_and_two_zooms() -> None:
    assert TTAConfig().views() == [(0.0, 0.0, 1.0)] and not TTAConfig().enabled
    assert TTAConfig(shift=0.1, scale=0.05).views() == [
        (0.0, 0.0, 1.0), (-0.1, 0.0, 1.0), (0.1, 0.0, 1.0), (0.0, -0.1, 1.0), (0.0, 0.1, 1.0),
        (0.0, 0.0, 1.05), (0.0, 0.0, 0.95)]


def test_a_shift_of_one_pixel_moves_the_image_and_fills_with_the_black_background() -> None:
    image = torch.full((1, 1, 4, 4), BACKGROUND)
    image[0, 0, 1, 1] = 1.0
    right = transform(image, 0.25, 0.0, 1.0)  # a quarter of a 4-px side: one pixel right
    expected = torch.full((1, 1, 4, 4), BACKGROUND)
    expected[0, 0, 1, 2] = 1.0
    assert torch.allclose(right, expected, atol=1e-5)
    down = transform(image, 0.0, 0.25, 1.0)
    expected = torch.full((1, 1, 4, 4), BACKGROUND)
    expected[0, 0, 2, 1] = 1.0
    assert torch.allclose(down, expected, atol=1e-5)


def test_the_age_is_the_mean_over_the_views() -> None:
    image = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
    output = forward_tta(TopLeftPixel(), image, torch.ones(1), TTAConfig(shift=0.25))
    # top-left pixel of: the image (0), moved left (pixel (0, 1) = 1), moved right (background), moved up
    # (pixel (1, 0) = 4), moved down (background)
    assert output.expected_months.item() == pytest.approx((0 + 1 + BACKGROUND + 4 + BACKGROUND) / 5)
    assert output.sex_logits.tolist() == [[0.0, 4.0]]  # those of the image itself
    plain = forward_tta(TopLeftPixel(), image, torch.ones(1), TTAConfig())
    assert plain.expected_months.item() == 0.0


def test_a_checkpoint_without_tta_metadata_has_none() -> None:
    assert not tta_config_of({}).enabled
    assert tta_config_of({"tta": {"shift": 0.05, "scale": 0.1}}) == TTAConfig(0.05, 0.1)


@pytest.mark.parametrize("values", [{"shift": -0.1}, {"shift": 0.5}, {"scale": 1.0}])
def test_a_bad_tta_setting_is_a_config_error(values) -> None:
    with pytest.raises(ConfigError):
        TTAConfig(**values)
