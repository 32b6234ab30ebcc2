"""Parameter groups: the one place that decides which state arrays train, stay frozen, are shared or stay local.

In the spirit of timm's `group_matcher`, TJ-Net's state is grouped by its top-level blocks
(`block1` ... `block6`); a block is the unit of freezing. Within the blocks that train, the
normalisation layers can be kept at the site (FedBN, `local_layers="norm"`), or the whole output
block 6 (FedRep's local head, `local_layers="head"`); everything else that trains is shared with the server. Freezing, FedBN, the keys a federation sends and accepts,
central DP and the DP-SGD engine all ask this module rather than deciding for themselves.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from core.errors import ConfigError
from core.model.tjnet import BLOCK_NAMES

LOCAL_LAYER_CHOICES = ("none", "norm", "head")
HEAD_BLOCK = 6  # FedRep: the block each site keeps as its own head
NORM_LAYER_TYPES = (nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.LayerNorm)
BATCH_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def group_matcher() -> dict[str, str]:
    """Group name -> regular expression over state keys (timm's convention), one group per block."""
    return {name: rf"^{name}\." for name in BLOCK_NAMES}


def block_of_key(key: str) -> int:
    """Block number (1-6) of a state-dict key such as "block3.0.project.0.weight"."""
    head = key.split(".", 1)[0]
    if head not in BLOCK_NAMES:
        raise KeyError(f"{key!r} does not belong to a TJ-Net block")
    return BLOCK_NAMES.index(head) + 1


def blocks_of_keys(keys: Iterable[str]) -> tuple[int, ...]:
    """The blocks (sorted) that `keys` touch."""
    return tuple(sorted({block_of_key(key) for key in keys}))


def block_modules(model: nn.Module) -> dict[int, nn.Module]:
    """Block number -> its module."""
    return {index: getattr(model, name) for index, name in enumerate(BLOCK_NAMES, start=1)}


def norm_layer_keys(model: nn.Module, types: tuple[type[nn.Module], ...] = NORM_LAYER_TYPES) -> list[str]:
    """State keys (parameters and buffers) of the normalisation layers of `types`, in state order."""
    prefixes = {name for name, module in model.named_modules() if isinstance(module, types)}
    return [key for key in model.state_dict() if key.rpartition(".")[0] in prefixes]


def batch_norm_keys(model: nn.Module) -> list[str]:
    """State keys of the BatchNorm layers (their running statistics are neither clipped nor noised)."""
    return norm_layer_keys(model, BATCH_NORM_TYPES)


@dataclass(frozen=True)
class ParameterGroups:
    """A model's state keys split by role, in state order.

    Attributes:
        frozen: keys of the frozen blocks (never sent, never trained).
        trainable: keys of the blocks that train (`shared` + `local`).
        shared: trainable keys that travel to and from the server.
        local: trainable keys kept at the site (normalisation layers under FedBN, block 6 under FedRep).
    """

    frozen: tuple[str, ...]
    trainable: tuple[str, ...]
    shared: tuple[str, ...]
    local: tuple[str, ...]


def parameter_groups(model: nn.Module, frozen_blocks: Iterable[int], local_layers: str = "none") -> ParameterGroups:
    """Split `model`'s state keys for a run that freezes `frozen_blocks` and keeps `local_layers` at the sites."""
    if local_layers not in LOCAL_LAYER_CHOICES:
        raise ConfigError(f"local-layers must be one of {', '.join(LOCAL_LAYER_CHOICES)}, got {local_layers!r}")
    blocks = set(frozen_blocks)
    keys = list(model.state_dict())
    frozen = tuple(k for k in keys if block_of_key(k) in blocks)
    trainable = tuple(k for k in keys if block_of_key(k) not in blocks)
    if local_layers == "head":
        kept = {k for k in trainable if block_of_key(k) == HEAD_BLOCK}
    else:
        kept = set(norm_layer_keys(model)) if local_layers == "norm" else set()
    local = tuple(k for k in trainable if k in kept)
    shared = tuple(k for k in trainable if k not in kept)
    return ParameterGroups(frozen, trainable, shared, local)


def blocks_not_received(received: Iterable[str]) -> tuple[int, ...]:
    """The blocks none of whose arrays were received: a site freezes them (it has nothing to send back)."""
    got = set(blocks_of_keys(received))
    return tuple(index for index in range(1, len(BLOCK_NAMES) + 1) if index not in got)


def set_trainable(model: nn.Module, frozen_blocks: Iterable[int]) -> None:
    """Freeze the parameters of `frozen_blocks`, unfreeze the others, and record the choice on the model.

    The model's `train()` keeps frozen blocks in eval mode, so their normalisation statistics stay fixed.
    """
    blocks = tuple(sorted(set(frozen_blocks)))
    unknown = [b for b in blocks if not 1 <= b <= len(BLOCK_NAMES)]  # 1-6 (6 only ever frozen by a site)
    if unknown or (blocks and not all(hasattr(model, name) for name in BLOCK_NAMES)):
        what = f"blocks {unknown}" if unknown else f"blocks {list(blocks)} of a {type(model).__name__}"
        raise ConfigError(f"cannot freeze {what}: freeze specs name TJ-Net blocks 1 to {len(BLOCK_NAMES) - 1}; "
                          f"use freeze 'none' for a model without TJ-Net blocks")
    if not all(hasattr(model, name) for name in BLOCK_NAMES):  # not a TJ-Net: nothing to freeze, all trains
        model.requires_grad_(True)
        model.frozen_blocks = ()
        return
    for index, module in block_modules(model).items():
        for parameter in module.parameters():
            parameter.requires_grad_(index not in blocks)
    model.frozen_blocks = blocks
    model.train(model.training)


def running_stat_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of the layers that keep running statistics; DP-SGD needs them frozen and in eval mode."""
    return [(name, module) for name, module in model.named_modules() if getattr(module, "track_running_stats", False)]
