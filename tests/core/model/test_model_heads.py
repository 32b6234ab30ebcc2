"""Each output head against values computed by hand, on TJ-Net and the baseline, and checkpoint round-trips."""

import math

import pytest
import torch

from core.checkpoint import build_model, describe, load_checkpoint, save_checkpoint
from core.model.baseline import ResNetConfig
from core.model.config import TJNetConfig
from core.model.heads import make_head

SMALL = dict(image_size=64, width=0.25)


def test_paper_head_is_the_expected_value_over_three_month_classes():
    head = make_head("paper", None, None)
    assert (head.num_classes, head.class_step_months, head.out_features) == (77, 3.0, 77)
    raw = torch.full((1, 77), -1e4)
    raw[0, 10], raw[0, 11] = 0.0, math.log(3.0)  # probabilities 1/4 at 30 months, 3/4 at 33 months
    out = head(raw)
    assert out.expected_months.item() == pytest.approx(0.25 * 30 + 0.75 * 33)
    assert out.predicted_class.item() == 11


def test_months_head_is_the_expected_value_over_240_one_month_classes():
    head = make_head("months", None, None)
    assert (head.num_classes, head.class_step_months, head.out_features) == (240, 1.0, 240)
    raw = torch.full((2, 240), -1e4)
    raw[0, 239] = 0.0
    raw[1, 100], raw[1, 101] = 0.0, 0.0
    assert head(raw).expected_months.tolist() == pytest.approx([239.0, 100.5])


def test_uniform_logits_give_the_middle_of_each_grid():
    assert make_head("paper", None, None)(torch.zeros(1, 77)).expected_months.item() == pytest.approx(114.0)
    assert make_head("months", None, None)(torch.zeros(1, 240)).expected_months.item() == pytest.approx(119.5)


def test_regression_head_maps_minus_one_one_onto_the_age_range():
    head = make_head("regression", None, None)
    assert head.out_features == 1
    out = head(torch.tensor([[-1.0], [0.0], [1.0], [0.5]]))
    assert out.expected_months.tolist() == pytest.approx([0.0, 114.0, 228.0, 171.0])
    assert out.age_logits is None
    assert head.scale(torch.tensor([0.0, 228.0, 57.0])).tolist() == pytest.approx([-1.0, 1.0, -0.5])
    with pytest.raises(ValueError, match="no class"):
        _ = out.probabilities


@pytest.mark.parametrize("bad", [dict(head="quantile"), dict(head="months", num_classes=1)])
def test_bad_head_settings_are_refused_in_one_line(bad):
    with pytest.raises(ValueError, match="head must be|num_classes"):
        TJNetConfig(**SMALL, **bad)


@pytest.mark.parametrize("arch", ["tjnet", "resnet"])
@pytest.mark.parametrize("head, width", [("paper", 77), ("months", 240), ("regression", 1)])
def test_both_models_take_each_head_and_round_trip_through_a_checkpoint(tmp_path, arch, head, width):
    torch.manual_seed(0)
    model = build_model(arch, {**SMALL, "head": head}).eval()
    image, male = torch.randn(2, 1, 64, 64), torch.tensor([0.0, 1.0])
    out = model(image, male)
    assert out.expected_months.shape == (2,)
    assert (out.age_logits is None) == (head == "regression")
    if out.age_logits is not None:
        assert out.age_logits.shape == (2, width)
    path = save_checkpoint(tmp_path / "m.pt", model, describe(model))
    loaded = load_checkpoint(path)
    assert loaded.metadata["model_config"]["head"] == head
    assert loaded.model.age_head.name == head
    torch.testing.assert_close(loaded.model.eval()(image, male).expected_months, out.expected_months)


def test_configs_written_before_heads_existed_read_as_the_old_models():
    assert TJNetConfig.from_dict({"num_classes": 77, "class_step_months": 3.0}).head == "paper"
    old = ResNetConfig.from_dict({"depth": 18, "max_months": 228.0})
    assert (old.head, old.num_classes, old.class_step_months) == ("regression", 77, 3.0)


def test_the_prior_start_sets_the_output_bias_to_the_training_class_frequencies():
    from core.model.heads import init_age_head, output_layer

    model = build_model("tjnet", SMALL)
    ages = [0.0, 1.0, 3.0, 3.0, 3.0, 228.0]  # classes 0, 0, 1, 1, 1, 76 of 3 months
    init_age_head(model, "prior", ages)
    bias = output_layer(model).bias
    assert output_layer(model) is model.block6.head[-1]
    # counts plus one pseudo-count per class: 3, 4, 1 x 74, 2 over 83
    expected = [math.log(3 / 83), math.log(4 / 83)] + [math.log(1 / 83)] * 74 + [math.log(2 / 83)]
    assert bias.tolist() == pytest.approx(expected, rel=1e-5)


def test_the_prior_start_of_a_regression_head_is_the_mean_age_and_uniform_changes_nothing():
    from core.model.heads import init_age_head, output_layer

    model = build_model("resnet", {**SMALL, "depth": 18})
    init_age_head(model, "prior", [60.0, 120.0])
    assert output_layer(model).bias.item() == pytest.approx(90.0 / 228.0 * 2 - 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    init_age_head(model, "uniform", [60.0, 120.0])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
