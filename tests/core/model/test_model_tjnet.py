"""TJ-Net shapes, outputs, parameter groups per block and ablation switches."""

import pytest
import torch

from core.model.config import TJNetConfig
from core.model.layers import CBAM, IncRes1, IncRes2
from core.model.tjnet import BLOCK_NAMES, TJNet

SMALL = dict(image_size=64, width=0.25)


def _batch(size: int = 64, n: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return torch.randn(n, 1, size, size), torch.tensor([0.0, 1.0, 1.0])[:n]


def test_outputs_have_the_documented_shapes_and_meaning():
    model = TJNet(TJNetConfig(**SMALL)).eval()
    image, male = _batch()
    out = model(image, male)
    assert out.age_logits.shape == (3, 77)
    assert out.sex_logits.shape == (3, 2)
    assert out.probabilities.shape == (3, 77)
    torch.testing.assert_close(out.probabilities.sum(dim=1), torch.ones(3))
    expected = out.probabilities @ (torch.arange(77, dtype=torch.float32) * 3.0)
    torch.testing.assert_close(out.expected_months, expected)
    assert out.predicted_class.shape == (3,)
    assert ((out.expected_months >= 0) & (out.expected_months <= 228)).all()


def test_sex_input_changes_the_age_prediction():
    model = TJNet(TJNetConfig(**SMALL)).eval()
    image, _ = _batch(n=1)
    girl = model(image, torch.tensor([0.0])).age_logits
    boy = model(image, torch.tensor([1.0])).age_logits
    assert not torch.allclose(girl, boy)


@pytest.mark.parametrize("size", [64, 96, 128])
def test_any_input_size_from_the_config_runs(size):
    model = TJNet(TJNetConfig(image_size=size, width=0.25)).eval()
    out = model(torch.randn(2, 1, size, size), torch.tensor([0.0, 1.0]))
    assert out.age_logits.shape == (2, 77)


def test_every_parameter_belongs_to_exactly_one_block():
    model = TJNet(TJNetConfig(**SMALL))
    total = sum(p.numel() for p in model.parameters())
    per_block = {name: sum(p.numel() for p in getattr(model, name).parameters()) for name in BLOCK_NAMES}
    assert sum(per_block.values()) == total
    assert all(count > 0 for count in per_block.values())
    assert {key.split(".")[0] for key in model.state_dict()} == set(BLOCK_NAMES)


def test_three_cbam_modules_and_both_incres_modules_are_present():
    model = TJNet(TJNetConfig(**SMALL))
    assert sum(isinstance(m, CBAM) for m in model.modules()) == 3
    assert sum(isinstance(m, IncRes1) for m in model.modules()) == 1
    assert sum(isinstance(m, IncRes2) for m in model.modules()) == 1


def test_no_cbam_ablation_removes_the_attention_modules():
    model = TJNet(TJNetConfig(use_cbam=False, **SMALL))
    assert not any(isinstance(m, CBAM) for m in model.modules())
    assert model(*_batch()).age_logits.shape == (3, 77)


def test_no_residual_ablation_removes_the_shortcuts():
    with_shortcut = TJNet(TJNetConfig(**SMALL))
    without = TJNet(TJNetConfig(use_residual=False, **SMALL))
    assert all(m.shortcut is not None for m in with_shortcut.modules() if isinstance(m, (IncRes1, IncRes2)))
    assert all(m.shortcut is None for m in without.modules() if isinstance(m, (IncRes1, IncRes2)))
    assert sum(p.numel() for p in without.parameters()) < sum(p.numel() for p in with_shortcut.parameters())


def test_no_joint_sex_ablation_removes_the_sex_head():
    model = TJNet(TJNetConfig(joint_sex=False, **SMALL))
    out = model(*_batch())
    assert out.sex_logits is None
    assert out.age_logits.shape == (3, 77)


def test_batchnorm_option_and_no_inplace_operations():
    model = TJNet(TJNetConfig(norm="batch", **SMALL))
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    for module in TJNet(TJNetConfig(**SMALL)).modules():
        assert not getattr(module, "inplace", False), module
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in TJNet(TJNetConfig(**SMALL)).modules())


def test_class_grid_is_77_classes_of_three_months():
    model = TJNet(TJNetConfig(**SMALL))
    grid = model.class_centres_months
    assert grid.shape == (77,) and float(grid[0]) == 0.0 and float(grid[-1]) == 228.0
    assert "class_centres_months" not in model.state_dict()


@pytest.mark.parametrize("bad", [dict(norm="layer"), dict(image_size=8), dict(width=0), dict(num_classes=1)])
def test_invalid_configs_are_refused(bad):
    with pytest.raises(ValueError):
        TJNetConfig(**bad)
