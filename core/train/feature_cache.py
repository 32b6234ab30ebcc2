"""Frozen-block features computed once per image (and per augmented view), reused by every epoch and round.

With blocks 1..k frozen their outputs for an image never change, yet training recomputes them at every
step: at 96 px with blocks 1-3 frozen that forward pass is most of a step on a CPU. `FeatureCache.prepare`
computes what the unfrozen blocks need (`core.model.split`) once and returns the model's `TrainableTail`
with a dataset of those features; training the tail on it trains the model, with the same loss and
gradients as the full model on the same images.

Augmentation is kept as a fixed number of `views` per image: epoch e of a training split uses view
e mod views, the augmentation the uncached dataset draws at epoch (e mod views). Each view is computed
the first time an epoch asks for it. A split without augmentation has a single view. With
`augment_where="features"` an augmented split keeps one un-augmented view instead and every epoch augments
its feature maps anew (`core.train.feature_augment`: no view costs a pass of the frozen blocks after the
first, but training sees an approximation of the image augmentation).

An entry is keyed by everything its features depend on: the SHA-256 of the frozen blocks' weights (the
pretrained model, and whatever a server sent into them), the SHA-256 of the decoded pixels (the site's
images, their preprocessing and input size), the input size, the frozen depth, the augmentation, its
seed, the number of views and where the augmentation happens. A change of any gives a new entry; entries
beyond the memory budget are dropped, least recently used first, and a split whose features would not fit
at all trains uncached.
Features live in memory only: a deployed SuperNode starting a fresh process per message recomputes them
once per round (no slower than without the cache), a simulation actor or `client finetune` reuses them.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset

from core.data.cache import cache_budget_from_env
from core.data.dataset import AugmentConfig, BoneAgeDataset, make_loader
from core.errors import ConfigError
from core.model.split import FrozenPrefix, TrainableTail, cached_depth
from core.model.tjnet import BLOCK_NAMES, TJNet
from core.train.feature_augment import AUGMENT_WHERE, augment_maps, plain_view, sampling_grids
from core.train.training import channels_last_layout

logger = logging.getLogger(__name__)

DEFAULT_FEATURE_BYTES = 1 << 30
DEFAULT_VIEWS = 4
PREFIX_BATCH = 64


def feature_budget_from_env() -> int:
    """The feature cache's budget in bytes from OSSIFL_FEATURE_CACHE_MB (unset: 1 GiB; 0: off)."""
    return cache_budget_from_env("OSSIFL_FEATURE_CACHE_MB", DEFAULT_FEATURE_BYTES)


@dataclass(frozen=True)
class FeatureKey:
    """What a cached split's features depend on; any change is another entry."""

    weights_sha256: str
    pixels_sha256: str
    image_size: int
    depth: int
    augment: AugmentConfig | None
    seed: int
    views: int
    in_features: bool = False  # one un-augmented view, augmented in feature space


def frozen_weights_sha256(model: nn.Module, depth: int) -> str:
    """SHA-256 of the state (names, shapes, values) of blocks 1..depth."""
    digest = hashlib.sha256()
    for index in range(depth):
        for name, tensor in getattr(model, BLOCK_NAMES[index]).state_dict().items():
            value = tensor.detach().cpu().contiguous()
            digest.update(f"{index}.{name}{tuple(value.shape)}{value.dtype}".encode())
            digest.update(value.numpy().tobytes() if value.dtype != torch.bfloat16 else value.float().numpy().tobytes())
    return digest.hexdigest()


def pixels_sha256(dataset: BoneAgeDataset) -> str:
    """SHA-256 of a split's decoded images (shape and bytes)."""
    digest = hashlib.sha256(str(dataset.images.shape).encode())
    digest.update(memoryview(dataset.images.tobytes() if not dataset.images.flags.c_contiguous else dataset.images))
    return digest.hexdigest()


class _Entry:
    """The views of one split, each computed on first use."""

    def __init__(self, count: int, feature_size: int, views: int) -> None:
        self.views: dict[int, torch.Tensor] = {}
        self.nbytes = count * feature_size * 4 * views


class CachedFeatures(Dataset):
    """A split as the tail sees it: items {"image": [D] features, "male", "age"}, views chosen by `set_epoch`."""

    def __init__(self, entry: _Entry, source: BoneAgeDataset, prefix: FrozenPrefix, shapes: list[tuple[int, ...]],
                 device: torch.device, views: int, channels_last: bool = True, in_features: bool = False) -> None:
        self.entry, self.source, self.prefix, self.device, self.views = entry, source, prefix, device, views
        self.shapes, self.feature_size = shapes, sum(math.prod(shape) for shape in shapes)
        self.channels_last, self.in_features = channels_last, in_features
        self.ages, self.male = source.ages_months, source.male_flags
        self.features: torch.Tensor | None = None  # the view in use; computed at the first set_epoch or item

    def __len__(self) -> int:
        return len(self.source)

    def set_epoch(self, epoch: int) -> None:
        """Use view epoch mod views (computing it now if no epoch used it before); in feature space, the one
        un-augmented view with this epoch's augmentation of its maps."""
        self.view = 0 if self.in_features else epoch % self.views
        if self.view not in self.entry.views:
            self.entry.views[self.view] = self._compute(self.view)
        self.features = self.entry.views[self.view]
        if self.in_features:
            augment = self.source.augment
            ratio = self.source.images.shape[-1] / self.source.image_size
            grids = sampling_grids(augment, len(self.source), self.source.seed, epoch, ratio)
            self.features = augment_maps(self.features, self.shapes, grids)

    def _compute(self, view: int) -> torch.Tensor:
        source = plain_view(self.source) if self.in_features else self.source
        previous = source.epoch
        source.set_epoch(view)
        self.prefix.eval()  # frozen blocks: eval mode already, stated again
        out = torch.empty(len(source), self.feature_size, dtype=torch.float32)
        start = 0
        with channels_last_layout(self.prefix, self.channels_last) as layout, torch.no_grad():
            for batch in make_loader(source, PREFIX_BATCH, shuffle=False, seed=0):
                image = batch["image"].to(self.device, memory_format=layout)
                flat = self.prefix(image)
                out[start:start + len(flat)] = flat.cpu()
                start += len(flat)
        source.set_epoch(previous)
        logger.debug("frozen-block features of %d images, view %d: %.1f MB", len(out), view, out.nbytes / 1e6)
        return out

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if self.features is None:  # read without set_epoch: the view of the source's epoch
            self.set_epoch(self.source.epoch)
        return {"image": self.features[index], "male": self.male[index], "age": self.ages[index]}


class FeatureCache:
    """Frozen-block features of training and validation splits, bounded in memory.

    Args:
        max_bytes: memory budget of all entries (float32 features of every view); 0 turns the cache off.
        views: augmented views kept per image of an augmented split (>= 1).
        channels_last: run the frozen blocks in channels-last layout (faster on CPU; the same values up to
            rounding as the standard layout).
        augment_where: "images" (an augmented split keeps `views` views of augmented images) or "features"
            (one view of the un-augmented images, its feature maps augmented every epoch: `core.train.feature_augment`).
    """

    def __init__(self, max_bytes: int = DEFAULT_FEATURE_BYTES, views: int = DEFAULT_VIEWS,
                 channels_last: bool = True, augment_where: str = "images") -> None:
        if augment_where not in AUGMENT_WHERE:
            raise ConfigError(f"the feature cache augments in {' or '.join(AUGMENT_WHERE)}, not {augment_where!r}")
        self.augment_where = augment_where
        if max_bytes < 0:
            raise ConfigError(f"the feature cache's memory budget must be >= 0 bytes, got {max_bytes}")
        if views < 1:
            raise ConfigError(f"the feature cache needs at least 1 view per image, got {views}")
        self.max_bytes, self.views, self.channels_last = max_bytes, views, channels_last
        self.hits = self.misses = 0
        self._entries: OrderedDict[FeatureKey, _Entry] = OrderedDict()

    @property
    def nbytes(self) -> int:
        """Bytes the entries held now may take once all their views are computed."""
        return sum(entry.nbytes for entry in self._entries.values())

    def key(self, model: nn.Module, dataset: BoneAgeDataset, depth: int) -> FeatureKey:
        in_features = dataset.augment is not None and self.augment_where == "features"
        views = self.views if dataset.augment is not None and not in_features else 1
        return FeatureKey(frozen_weights_sha256(model, depth), pixels_sha256(dataset), dataset.image_size, depth,
                          dataset.augment, dataset.seed, views, in_features)

    def prepare(self, model: nn.Module, dataset: BoneAgeDataset, device: torch.device,
                tail: TrainableTail | None = None) -> tuple[TrainableTail, CachedFeatures] | None:
        """The model's trainable tail and `dataset` as features of its frozen prefix (`model.frozen_blocks`).

        None when there is nothing to reuse (block 1 trains, not a TJ-Net, cache off) or the split's
        features would not fit in the budget: the caller then trains the whole model as usual.
        Pass the `tail` of an earlier call on the same model to share it (e.g. training and validation).
        """
        depth = cached_depth(getattr(model, "frozen_blocks", ())) if isinstance(model, TJNet) else 0
        if depth == 0 or self.max_bytes == 0 or len(dataset) == 0:
            return None
        tail = tail if tail is not None and tail.depth == depth else TrainableTail(model, depth)
        key = self.key(model, dataset, depth)
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            self.hits += 1
        else:
            entry = _Entry(len(dataset), tail.feature_size, key.views)
            if entry.nbytes > self.max_bytes:
                logger.warning("frozen-block features of %d images (%d views) need %.0f MB, over the cache's %.0f MB:"
                               " training without the cache", len(dataset), key.views, entry.nbytes / 1e6,
                               self.max_bytes / 1e6)
                return None
            self.misses += 1
            self._entries[key] = entry
            self._evict()
        return tail, CachedFeatures(entry, dataset, FrozenPrefix(model, depth), tail.shapes, device, key.views,
                                    self.channels_last, key.in_features)

    def _evict(self) -> None:
        while self.nbytes > self.max_bytes:
            _, entry = self._entries.popitem(last=False)
            logger.info("frozen-block feature cache over %.0f MB: dropped an entry of %.1f MB", self.max_bytes / 1e6,
                        entry.nbytes / 1e6)
