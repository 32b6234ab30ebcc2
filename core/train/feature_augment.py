"""Augmentation of cached frozen-block feature maps: views that cost nothing to compute.

The feature cache (`core.train.feature_cache`) keeps by default a fixed number of augmented views per image, each
one a full pass of the frozen blocks. With augmentation in feature space instead it computes the frozen blocks
once, on the un-augmented image (the centre of the training canvas: the image evaluation sees), and every epoch
draws for each image the geometric part of the image augmentation (`AugmentConfig`: rotation, zoom, the random
crop's shift, the optional flip) and applies it to the cached feature maps by bilinear resampling. The frozen
blocks are convolutional (up to their pooling), so a rotated, zoomed or shifted image gives roughly the
transformed maps; roughly, because the maps are coarse (6 x 6 after block 3 at 96 px: a feature cell is 16
pixels) and the blocks' attention and pooling are not exactly equivariant. Brightness and contrast changes have
no counterpart in feature space and are not reproduced; globally pooled parts (block 2's average with blocks 1-3
frozen, every part with 1-4 or 1-5) are left as they are, so with blocks 1-4 or 1-5 frozen training sees the
un-augmented features only. This changes what training sees: it is an option (`--feature-augment features`),
not the default.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from core.data.dataset import AugmentConfig, BoneAgeDataset, DecodedSplit
from core.schema import Setting

AUGMENT_WHERE = ("images", "features")  # where a cached training split is augmented
# The one declaration of the setting, wherever a site fine-tunes: `client finetune --feature-augment` (FINETUNE_SCHEMA),
# `python -m sim --feature-augment` and an experiment file's `feature_augment` (SIM_SCHEMA: sites and baselines), a
# site's node config `feature-augment` (client.config.SITE_SCHEMA: its ClientApp); each schema adds only its key.
FEATURE_AUGMENT = Setting(
    "feature_augment", str, "images", "where the feature cache augments a training split: 'images' (a fixed number "
    "of views of augmented images, each a pass of the frozen blocks) or 'features' (one un-augmented view; its "
    "feature maps rotated, zoomed and shifted anew every epoch: faster, approximate)", flag="--feature-augment",
    choices=AUGMENT_WHERE)


def plain_view(dataset: BoneAgeDataset) -> BoneAgeDataset:
    """`dataset` without augmentation: the centre `image_size` square of its stored canvas, the same decoded
    pixels (no copy when the canvas is the input size)."""
    side, canvas = dataset.image_size, dataset.images.shape[-1]
    top = (canvas - side) // 2
    images = dataset.images[:, top:top + side, top:top + side]
    return BoneAgeDataset(dataset.records, side, None, dataset.seed,
                          decoded=DecodedSplit(dataset.records, np.ascontiguousarray(images), dataset.skipped))


def inverse_maps(angle_deg: np.ndarray, zoom: np.ndarray, shift: np.ndarray, flip: np.ndarray) -> torch.Tensor:
    """[N, 2, 3] affine maps (`F.affine_grid` convention: output point -> the point it samples in the un-augmented
    view, coordinates spanning [-1, 1] across the view, x to the right and y down) undoing, for each item, a
    rotation by `angle_deg` and a zoom by `zoom` about the centre, then a crop whose centre sits `shift` [N, 2]
    (x, y) from the view's centre, then a horizontal flip where `flip` is True: the order of `AugmentConfig`."""
    angle = np.deg2rad(angle_deg)
    cos, sin = np.cos(angle) / zoom, np.sin(angle) / zoom
    inverse = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], 1)  # (zoom R)^-1, [N, 2, 2]
    offset = np.einsum("nij,nj->ni", inverse, shift)  # the crop's shift, undone through the affine map
    inverse[:, :, 0] *= np.where(flip, -1.0, 1.0)[:, None]  # the flip comes last: undone first
    return torch.from_numpy(np.concatenate([inverse, offset[:, :, None]], axis=2)).float()


def sampling_grids(augment: AugmentConfig, count: int, seed: int, epoch: int, canvas_ratio: float) -> torch.Tensor:
    """`inverse_maps` of one epoch's draws for `count` images, fixed by (seed, epoch), within `augment`'s limits.

    `canvas_ratio`: the stored canvas over the input side (1.15 with random crops, else 1): a crop's centre lies
    up to (ratio - 1) half-sides either way of the view's centre."""
    rng = np.random.default_rng([seed, epoch, 0x6FEA])
    angle = rng.uniform(-augment.rotate_deg, augment.rotate_deg, count)
    zoom = rng.uniform(1.0 - augment.scale, 1.0 + augment.scale, count)
    reach = canvas_ratio - 1.0 if augment.crop else 0.0
    shift = rng.uniform(-reach, reach, (count, 2))
    flip = rng.random(count) < 0.5 if augment.hflip else np.zeros(count, dtype=bool)
    return inverse_maps(angle, zoom, shift, flip)


def augment_maps(flat: torch.Tensor, shapes: list[tuple[int, ...]], grids: torch.Tensor) -> torch.Tensor:
    """Flat features [N, D] (parts of `shapes`, as `core.model.split` packs them) with each spatial part
    resampled through `grids` [N, 2, 3] (bilinear, edges repeated); vector parts unchanged."""
    parts, start = [], 0
    for shape in shapes:
        size = math.prod(shape)
        chunk = flat[:, start:start + size]
        start += size
        if len(shape) == 3:
            maps = chunk.reshape(-1, *shape)
            grid = F.affine_grid(grids, list(maps.shape), align_corners=False)
            chunk = F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=False)
            chunk = chunk.reshape(len(flat), size)
        parts.append(chunk)
    return torch.cat(parts, dim=1)
