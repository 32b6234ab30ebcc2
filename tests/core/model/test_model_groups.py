"""The parameter-group API: one split of a model's state into frozen, trainable, shared and local keys."""

from __future__ import annotations

import pytest
import torch

from core.errors import ConfigError
from core.model.config import TJNetConfig
from core.model.groups import (batch_norm_keys, block_of_key, blocks_not_received, group_matcher, norm_layer_keys,
                               parameter_groups, set_trainable)
from core.model.tjnet import TJNet


@pytest.fixture(scope="module")
def model() -> TJNet:
    torch.manual_seed(0)
    return TJNet(TJNetConfig(image_size=48, width=0.25))


def test_groups_partition_the_state_by_block_and_role(model: TJNet) -> None:
    keys = list(model.state_dict())
    groups = parameter_groups(model, (1, 2, 3), "norm")
    assert sorted(groups.frozen + groups.trainable) == sorted(keys)
    assert all(block_of_key(k) <= 3 for k in groups.frozen) and all(block_of_key(k) >= 4 for k in groups.trainable)
    assert set(groups.shared) | set(groups.local) == set(groups.trainable)
    assert not set(groups.shared) & set(groups.local)
    assert groups.local and set(groups.local) <= set(norm_layer_keys(model))
    plain = parameter_groups(model, (1, 2, 3))
    assert plain.local == () and plain.shared == plain.trainable == groups.trainable


def test_group_matcher_covers_every_key_once(model: TJNet) -> None:
    import re
    patterns = group_matcher()
    for key in model.state_dict():
        assert sum(bool(re.match(p, key)) for p in patterns.values()) == 1, key


def test_set_trainable_freezes_exactly_the_named_blocks(model: TJNet) -> None:
    set_trainable(model, (1, 2))
    for name, parameter in model.named_parameters():
        assert parameter.requires_grad == (block_of_key(name) > 2), name
    assert model.frozen_blocks == (1, 2)
    set_trainable(model, ())
    assert all(p.requires_grad for p in model.parameters())


def test_blocks_not_received_are_the_ones_a_site_freezes(model: TJNet) -> None:
    keys = parameter_groups(model, (1, 2, 3)).shared
    assert blocks_not_received(keys) == (1, 2, 3)
    assert blocks_not_received(model.state_dict()) == ()


def test_batch_norm_keys_only_for_a_batch_norm_model() -> None:
    assert batch_norm_keys(TJNet(TJNetConfig(image_size=48, width=0.25))) == []
    bn = TJNet(TJNetConfig(image_size=48, width=0.25, norm="batch"))
    assert batch_norm_keys(bn) and any(k.endswith("running_mean") for k in batch_norm_keys(bn))


def test_unknown_local_layers_are_refused(model: TJNet) -> None:
    with pytest.raises(ConfigError, match="local-layers"):
        parameter_groups(model, (), "everything")


def test_freezing_blocks_of_a_model_without_them_is_one_line_and_none_trains_everything() -> None:
    from core.model.baseline import ResNetConfig, ResNetRegressor

    resnet = ResNetRegressor(ResNetConfig(image_size=32))
    with pytest.raises(ConfigError, match=r"cannot freeze blocks \[1, 2, 3\] of a ResNetRegressor"):
        set_trainable(resnet, (1, 2, 3))
    set_trainable(resnet, ())
    assert all(p.requires_grad for p in resnet.parameters()) and resnet.frozen_blocks == ()


def test_a_site_sent_nothing_of_the_last_blocks_freezes_them(model: TJNet) -> None:
    early = [k for k in model.state_dict() if block_of_key(k) <= 4]
    assert blocks_not_received(early) == (5, 6)
    assert blocks_not_received([k for k in model.state_dict() if block_of_key(k) == 6]) == (1, 2, 3, 4, 5)


def test_running_statistics_layers_are_the_batch_norms_only() -> None:
    from core.model.groups import running_stat_layers

    batch = TJNet(TJNetConfig(image_size=32, width=0.25, norm="batch"))
    found = running_stat_layers(batch)
    assert found and all(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for _, m in found)
    assert running_stat_layers(TJNet(TJNetConfig(image_size=32, width=0.25))) == []  # GroupNorm keeps none


def test_head_mode_keeps_exactly_the_head_block_at_the_site(model: TJNet) -> None:
    from core.model.groups import HEAD_BLOCK, parameter_groups

    groups = parameter_groups(model, (1, 2, 3), "head")
    assert groups.local and {block_of_key(k) for k in groups.local} == {HEAD_BLOCK}
    assert not {block_of_key(k) for k in groups.shared} & {HEAD_BLOCK, 1, 2, 3}
    with pytest.raises(KeyError, match="does not belong to a TJ-Net block"):
        block_of_key("fc.weight")
