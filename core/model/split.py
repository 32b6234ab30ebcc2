"""TJ-Net cut in two at its frozen prefix: what frozen blocks 1..k compute, and the blocks that train on it.

With blocks 1..k frozen (in eval mode, their normalisation statistics fixed), their outputs for a given
input never change during fine-tuning. `FrozenPrefix` computes exactly the outputs the rest of the network
needs, packed into one flat vector per image; `TrainableTail` unpacks that vector and runs the remaining
blocks, sharing the model's own modules (training the tail trains the model). Block 5 fuses the global
averages of blocks 2-4, so a prefix keeps more than its last output:

| frozen | what the tail needs (S = input side)                   |
|--------|--------------------------------------------------------|
| 1      | block 1's output (c1 x S/4)                             |
| 1-2    | block 2's output (c2 x S/8); the tail pools it itself  |
| 1-3    | block 2's global average (c2) and block 3's output      |
| 1-4    | the global averages of blocks 2, 3 and 4 (c2+c3+c4)     |
| 1-5    | block 5's 256 features and its sex logits (if any)      |

A freeze that is not a prefix (e.g. "2-3") caches the longest prefix it contains (none here); frozen
blocks inside the tail still run, in eval mode.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from core.model.heads import AgeOutput
from core.model.tjnet import BLOCK_NAMES, TJNet

# the blocks the tail runs after a frozen prefix of depth k: k + 1 .. 6
CACHEABLE_DEPTHS = (1, 2, 3, 4, 5)


def cached_depth(frozen_blocks: Iterable[int]) -> int:
    """The depth k of the longest frozen prefix 1..k (0: block 1 trains, nothing to cache)."""
    frozen = set(frozen_blocks)
    depth = 0
    while depth + 1 in frozen and depth + 1 in CACHEABLE_DEPTHS:
        depth += 1
    return depth


def _pool(feature: torch.Tensor) -> torch.Tensor:
    return torch.mean(feature, dim=(2, 3))


class FrozenPrefix(nn.Module):
    """Blocks 1..depth of `model` (not copied) giving the tail's inputs as one flat float32 vector per image."""

    def __init__(self, model: TJNet, depth: int) -> None:
        super().__init__()
        if depth not in CACHEABLE_DEPTHS:
            raise ValueError(f"a frozen prefix has depth 1-5, got {depth}")
        self.depth = depth
        self.blocks = nn.ModuleList(getattr(model, BLOCK_NAMES[i]) for i in range(depth))

    def parts(self, image: torch.Tensor) -> list[torch.Tensor]:
        """The tail's inputs, unflattened, in the order `TrainableTail` unpacks them."""
        outputs = []
        x = image
        for block in self.blocks[:min(self.depth, 4)]:
            x = block(x)
            outputs.append(x)
        if self.depth <= 2:
            return [outputs[-1]]
        if self.depth == 3:
            return [_pool(outputs[1]), outputs[2]]
        pooled = torch.cat([_pool(f) for f in outputs[1:4]], dim=1)
        if self.depth == 4:
            return [pooled]
        features, sex_logits = self.blocks[4](pooled)
        return [features] if sex_logits is None else [features, sex_logits]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """[B, 1, S, S] images -> [B, D] float32 (call in eval mode, without gradients)."""
        return torch.cat([p.reshape(p.shape[0], -1).float() for p in self.parts(image)], dim=1)


def part_shapes(model: TJNet, depth: int) -> list[tuple[int, ...]]:
    """The per-image shapes of the prefix's outputs for `model`'s input size (one dry run on a blank image)."""
    side = model.config.image_size
    prefix = FrozenPrefix(model, depth)
    was_training = [block.training for block in prefix.blocks]
    prefix.eval()
    with torch.no_grad():
        device = next(model.parameters()).device
        parts = prefix.parts(torch.zeros(1, model.config.in_channels, side, side, device=device))
    for block, mode in zip(prefix.blocks, was_training):
        block.train(mode)
    return [tuple(p.shape[1:]) for p in parts]


class TrainableTail(nn.Module):
    """Blocks depth+1..6 of `model` (shared, not copied): `tail(flat, male)` equals `model(image, male)`
    when `flat = FrozenPrefix(model, depth)(image)`.

    Its submodules carry the model's block names, so its state-dict keys and parameter names are the model's
    own (a FedProx reference or a saved best state fits both). Blocks of the tail the model freezes stay in
    eval mode, as in the model.
    """

    def __init__(self, model: TJNet, depth: int) -> None:
        super().__init__()
        if depth not in CACHEABLE_DEPTHS:
            raise ValueError(f"a frozen prefix has depth 1-5, got {depth}")
        self.depth = depth
        self.config = model.config
        self.shapes = part_shapes(model, depth)
        self.sizes = [math.prod(shape) for shape in self.shapes]
        self.channels_last = True  # feature maps in channels-last layout (faster convolutions on CPU)
        self._model = [model]  # a plain list: the whole model is not a submodule of its tail
        for index in range(depth + 1, len(BLOCK_NAMES) + 1):
            self.add_module(BLOCK_NAMES[index - 1], getattr(model, BLOCK_NAMES[index - 1]))
        self.train(model.training)

    @property
    def feature_size(self) -> int:
        """Length D of the flat vector per image."""
        return sum(self.sizes)

    @property
    def frozen_blocks(self) -> tuple[int, ...]:
        return self._model[0].frozen_blocks

    def train(self, mode: bool = True) -> "TrainableTail":
        super().train(mode)
        for index in self._model[0].frozen_blocks:
            if index > self.depth:
                getattr(self, BLOCK_NAMES[index - 1]).eval()
        return self

    def forward(self, flat: torch.Tensor, male: torch.Tensor) -> AgeOutput:
        parts = [chunk.reshape(-1, *shape) for chunk, shape in zip(torch.split(flat, self.sizes, dim=1), self.shapes)]
        if self.channels_last:
            parts = [p.contiguous(memory_format=torch.channels_last) if p.dim() == 4 else p for p in parts]
        if self.depth == 5:
            return self.block6(parts[0], male, parts[1] if len(parts) > 1 else None)
        if self.depth == 4:
            pooled = parts[0]
        else:
            if self.depth == 1:
                f2 = self.block2(parts[0])
                pooled2, f3 = _pool(f2), self.block3(f2)
            elif self.depth == 2:
                pooled2, f3 = _pool(parts[0]), self.block3(parts[0])
            else:
                pooled2, f3 = parts
            f4 = self.block4(f3)
            pooled = torch.cat([pooled2, _pool(f3), _pool(f4)], dim=1)
        features, sex_logits = self.block5(pooled)
        return self.block6(features, male, sex_logits)
