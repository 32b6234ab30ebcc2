"""Freezing blocks: spec parsing, parameter groups and bit-identical frozen state after training."""

import pytest
import torch

from core.train.loss import JointLoss
from core.model.config import TJNetConfig
from core.model.freeze import (FreezeSpec, FreezeSpecError, block_of_key, format_freeze_spec, freeze_blocks,
                               parse_freeze_spec, parse_freeze_spec_list, trainable_state_keys)
from core.model.tjnet import TJNet

FREEZE_SPEC_LIST = ("1", "1-2", "1-3", "1-4", "none")


@pytest.mark.parametrize("spec,blocks", [("none", ()), ("", ()), (None, ()), ("1", (1,)), ("1-2", (1, 2)),
                                         ("1-3", (1, 2, 3)), ("1-4", (1, 2, 3, 4)), ("2,4", (2, 4))])
def test_freeze_specs_parse(spec, blocks):
    assert parse_freeze_spec(spec) == blocks


@pytest.mark.parametrize("spec", ["1-6", "0-2", "3-1", "abc", "1-3-4", "7"])
def test_bad_freeze_specs_are_refused_with_a_message(spec):
    with pytest.raises(FreezeSpecError, match="freeze spec"):
        parse_freeze_spec(spec)


def test_format_is_the_inverse_of_parse():
    for spec in ("none", "1", "1-2", "1-3", "1-4"):
        assert format_freeze_spec(parse_freeze_spec(spec)) == spec


def _train_step(model: TJNet, steps: int = 2) -> None:
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss_fn = JointLoss(77, 3.0)
    torch.manual_seed(1)
    model.train()
    for _ in range(steps):
        image = torch.randn(4, 1, 64, 64)
        male = torch.tensor([0.0, 1.0, 0.0, 1.0])
        age = torch.tensor([10.0, 60.0, 120.0, 200.0])
        optimizer.zero_grad()
        loss_fn(model(image, male), age, male).total.backward()
        optimizer.step()


@pytest.mark.parametrize("norm", ["group", "batch"])
def test_a_training_step_leaves_frozen_parameters_and_statistics_bit_identical(norm):
    torch.manual_seed(0)
    model = TJNet(TJNetConfig(image_size=64, width=0.25, norm=norm))
    freeze_blocks(model, (1, 2, 3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _train_step(model)
    after = model.state_dict()
    for key, value in before.items():
        if block_of_key(key) <= 3:
            assert torch.equal(value, after[key]), f"frozen {key} changed"
    changed = [k for k in before if block_of_key(k) > 3 and not torch.equal(before[k], after[k])]
    assert changed, "the unfrozen blocks did not train"


def test_frozen_blocks_stay_in_eval_mode_while_the_rest_trains():
    model = TJNet(TJNetConfig(image_size=64, width=0.25, norm="batch"))
    freeze_blocks(model, (1, 2))
    model.train()
    assert not model.block1.training and not model.block2.training
    assert model.block3.training and model.block6.training
    assert all(not m.training for m in model.block1.modules())


def test_trainable_keys_list_only_unfrozen_blocks():
    model = TJNet(TJNetConfig(image_size=64, width=0.25))
    freeze_blocks(model, (1, 2, 3))
    keys = trainable_state_keys(model)
    assert keys and all(block_of_key(k) >= 4 for k in keys)
    assert {p for n, p in model.named_parameters() if p.requires_grad} == {
        p for n, p in model.named_parameters() if block_of_key(n) >= 4}
    freeze_blocks(model, ())
    assert trainable_state_keys(model) == list(model.state_dict())


@pytest.mark.parametrize("text,canonical", [("1,2,3", "1-3"), ("1-3", "1-3"), ("3,1,2", "1-3"), ("1+2+3", "1-3"),
                                            ("2,4", "2+4"), ("1-2+4", "1-2+4"), ("1,2,4", "1-2+4"), ("none", "none"),
                                            ("", "none"), (" 1 - 2 ", "1-2"), ("NONE", "none")])
def test_a_freeze_spec_prints_itself_canonically(text, canonical):
    spec = FreezeSpec.parse(text)
    assert spec == canonical and str(spec) == canonical and FreezeSpec.parse(canonical) == spec
    assert spec.blocks == parse_freeze_spec(text)
    assert "," not in spec  # a canonical spec can always sit in a comma-separated list


def test_specs_that_differ_only_in_how_they_are_written_are_one_spec():
    assert FreezeSpec.parse("1,2,3") == FreezeSpec.parse("1-3") == FreezeSpec.of((3, 2, 1))
    assert len({FreezeSpec.parse(s) for s in ("1,2,3", "1-3", "1+2+3")}) == 1
    assert FreezeSpec.parse(FreezeSpec.parse("1-2")) == "1-2"


@pytest.mark.parametrize("text,specs", [("1-3,none", ("1-3", "none")), ("1,1-2,1-3,1-4,none", FREEZE_SPEC_LIST),
                                        ("1+2+3,none", ("1-3", "none")), ("1-3, 1-3", ("1-3",)), ("2", ("2",))])
def test_lists_of_specs_are_separated_by_commas(text, specs):
    assert parse_freeze_spec_list(text) == specs


@pytest.mark.parametrize("text", ["1,2,3", "2,4", "1,2,none"])
def test_a_list_that_could_be_one_spec_is_refused_in_one_line(text):
    with pytest.raises(FreezeSpecError, match=r"ambiguous.*1\+2|ambiguous") as caught:
        parse_freeze_spec_list(text)
    assert "\n" not in str(caught.value)
