"""Scoring splits through frozen-block features computed once: the pretrained and the fine-tuned model share them.

`client finetune` scores the test split with the pretrained model, fine-tunes blocks k+1..6, scores the test split
again and fits the conformal interval on the val split (twice when the model has a sex head: with the sex given and
with the sex it predicts), each with every view of the test-time augmentation the model records. Blocks 1..k are
the same in both models, so their outputs for each image and TTA view need computing only once: `ScoringFeatures`
keeps them (per split and view) and runs only the tail (`core.model.split.TrainableTail`) per model, with the same
views, the same averaging and the same site calibration as `core.predict.tta.forward_tta`, so the predictions are
the uncached ones up to floating-point rounding.

The reuse is checked, not assumed: an entry is keyed by the SHA-256 of blocks 1..k's weights as they are when the
split is scored (`core.train.feature_cache.frozen_weights_sha256`), the SHA-256 of the split's decoded pixels, the
input size, the depth and the TTA views. A model whose frozen blocks changed gets new features; entries beyond the
memory budget are dropped, least recently used first, and a split that would not fit is scored the usual way.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from core.data.dataset import BoneAgeDataset, make_loader
from core.model.heads import AgeOutput
from core.model.split import FrozenPrefix, TrainableTail
from core.model.tjnet import TJNet
from core.predict.tta import TTAConfig, mean_of_views, transform
from core.train.feature_cache import DEFAULT_FEATURE_BYTES, frozen_weights_sha256, pixels_sha256
from core.train.training import channels_last_layout

logger = logging.getLogger(__name__)

BATCH = 64


@dataclass(frozen=True)
class ScoringKey:
    weights_sha256: str
    pixels_sha256: str
    image_size: int
    depth: int
    views: tuple[tuple[float, float, float], ...]


@dataclass(frozen=True)
class ScoredSplit:
    """Per image, in split order: the age predicted with the sex given, with the sex the head predicts (None: not
    asked, or no sex head), the true age and the sex."""

    predicted_months: np.ndarray
    head_predicted_months: np.ndarray | None
    true_months: np.ndarray
    male: np.ndarray


class ScoringFeatures:
    """Frozen-block features of evaluation splits, one tensor [N, D] per TTA view, bounded in memory.

    Args:
        depth: the frozen prefix 1..depth the scored models share (`core.model.split.cached_depth`).
        max_bytes: memory budget of all entries; a split over it is scored without the cache (None returned).
    """

    def __init__(self, depth: int, max_bytes: int = DEFAULT_FEATURE_BYTES) -> None:
        self.depth, self.max_bytes = depth, max_bytes
        self.hits = self.misses = 0
        self._entries: OrderedDict[ScoringKey, list[torch.Tensor]] = OrderedDict()

    def score(self, model: nn.Module, dataset: BoneAgeDataset, device: torch.device, tta: TTAConfig | None,
              sex_from_head: bool = False) -> ScoredSplit | None:
        """`model`'s predictions on `dataset` as `core.train.training.predict` (and, with `sex_from_head`,
        `core.intervals.conformal.predictions_of(sex_from_head=True)`) give them; None when nothing can be reused
        (not a TJ-Net, no frozen prefix, an empty split, over the budget)."""
        if not isinstance(model, TJNet) or self.depth == 0 or len(dataset) == 0 or self.max_bytes == 0:
            return None
        views = tuple((tta or TTAConfig()).views())
        tail = TrainableTail(model, self.depth)
        key = ScoringKey(frozen_weights_sha256(model, self.depth), pixels_sha256(dataset), dataset.image_size,
                         self.depth, views)
        features = self._entries.get(key)
        if features is not None:
            self._entries.move_to_end(key)
            self.hits += 1
        else:
            nbytes = len(dataset) * tail.feature_size * 4 * len(views)
            if nbytes > self.max_bytes:
                logger.info("scoring features of %d images need %.0f MB, over the cache's %.0f MB: scored uncached",
                            len(dataset), nbytes / 1e6, self.max_bytes / 1e6)
                return None
            self.misses += 1
            features = self._entries[key] = _compute(model, self.depth, dataset, device, views)
            while sum(sum(f.nbytes for f in entry) for entry in self._entries.values()) > self.max_bytes:
                self._entries.popitem(last=False)
        return _predict_tail(model, tail, features, dataset, device, sex_from_head)


def _compute(model: TJNet, depth: int, dataset: BoneAgeDataset, device: torch.device,
             views: tuple[tuple[float, float, float], ...]) -> list[torch.Tensor]:
    """Blocks 1..depth's flat outputs for every image of `dataset` under each TTA view (as `forward_tta` moves it)."""
    prefix = FrozenPrefix(model, depth)
    was_training = model.training
    model.eval()
    parts: list[list[torch.Tensor]] = [[] for _ in views]
    with channels_last_layout(prefix) as layout, torch.inference_mode():
        for batch in make_loader(dataset, BATCH, shuffle=False, seed=0):
            image = batch["image"].to(device, memory_format=layout)
            for index, (dx, dy, zoom) in enumerate(views):
                moved = transform(image, dx, dy, zoom).contiguous(memory_format=layout)
                parts[index].append(prefix(moved).cpu())
    model.train(was_training)
    out = [torch.cat(p) for p in parts]
    logger.debug("scoring features of %d images, %d views: %.1f MB", len(dataset), len(views),
                 sum(f.nbytes for f in out) / 1e6)
    return out


def _forward_views(model: nn.Module, tail: TrainableTail, views: list[torch.Tensor], male: torch.Tensor) -> AgeOutput:
    """`core.predict.tta.forward_tta` on cached features: the views' mean age, then the site calibration."""
    return mean_of_views(model, lambda index: tail(views[index], male), len(views), male)


def _predict_tail(model: nn.Module, tail: TrainableTail, features: list[torch.Tensor], dataset: BoneAgeDataset,
                  device: torch.device, sex_from_head: bool) -> ScoredSplit:
    was_training = model.training
    tail.eval()
    true, male = dataset.ages_months.float(), dataset.male_flags.float()
    given: list[torch.Tensor] = []
    from_head: list[torch.Tensor] = []
    with torch.inference_mode():
        for start in range(0, len(dataset), BATCH):
            batch = [f[start:start + BATCH].to(device) for f in features]
            sex = male[start:start + BATCH].to(device)
            given.append(_forward_views(model, tail, batch, sex).expected_months.float().cpu())
            # as `predict_batch` with every sex unknown: the sex head's (it ignores the sex input), then the age
            logits = tail(batch[0], torch.zeros_like(sex)).sex_logits if sex_from_head else None
            if logits is not None:
                used = (torch.softmax(logits.float(), dim=1)[:, 1] >= 0.5).float()
                from_head.append(_forward_views(model, tail, batch, used).expected_months.float().cpu())
    tail.train(was_training)
    model.train(was_training)
    return ScoredSplit(torch.cat(given).numpy(), torch.cat(from_head).numpy() if from_head else None,
                       true.numpy(), male.numpy())
