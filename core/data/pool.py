"""Each image of a command read and preprocessed once, then cut into whatever datasets the command needs.

Reading and preprocessing full-size radiographs costs far more than a small model's forward pass, so a command
that builds many datasets from the same images (`client finetune --compare`: every fold of every freeze spec,
then the final model; `server evaluate --split all`: the three splits and their union) decodes each image once
here and takes datasets from the decoded arrays. The arrays are those `BoneAgeDataset` would have decoded
itself (same pipeline, same fitting), so results do not change, only the time.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from core.data.config import SiteDataConfig
from core.data.dataset import AugmentConfig, BoneAgeDataset, DecodedSplit, Preprocessing, canvas_size, decode_records
from core.data.manifest import Record, Skip, load_manifest
from core.data.site import SiteData
from core.data.split import DEFAULT_FRACTIONS, split_of

if TYPE_CHECKING:
    from core.data.views import StackedViews

logger = logging.getLogger(__name__)


class DecodedPool:
    """A site's usable images decoded once, at the model's input size and at the larger canvas training crops from.

    Attributes:
        records: the records whose image could be used, in manifest order.
        skipped: records left out (unreadable, refused by preprocessing), with their reasons.
    """

    def __init__(self, data: SiteDataConfig, image_size: int, preprocess: Preprocessing | None,
                 progress: bool = False) -> None:
        self.manifest = load_manifest(data)
        self.image_size = image_size
        if preprocess is not None:  # the noise gate against this site's own images, as `load_site` measures it
            preprocess = preprocess.for_folder([record.path for record in self.manifest.records])
        canvases = tuple(sorted({image_size, canvas_size(image_size, AugmentConfig())}))
        self.records, self._images, self.skipped = decode_records(self.manifest.records, image_size, canvases,
                                                                  progress, preprocess)
        self._row = {record.image_id: i for i, record in enumerate(self.records)}
        for skip in self.skipped:
            logger.warning("skipped image %s: %s %s", skip.image_id, skip.reason, skip.detail)
        logger.info("decoded %d images once (%d skipped) for every dataset of this command", len(self.records),
                    len(self.skipped))

    def dataset(self, records: list[Record], augment: AugmentConfig | None = None, seed: int = 0,
                skipped: list[Skip] | None = None) -> BoneAgeDataset:
        """The dataset of `records` (all usable), taken from the decoded arrays."""
        rows = np.array([self._row[record.image_id] for record in records], dtype=np.int64)
        images = self._images[canvas_size(self.image_size, augment)][rows]
        return BoneAgeDataset([], self.image_size, augment, seed,
                              decoded=DecodedSplit(list(records), images, list(skipped or [])))

    def site(self, augment_train: AugmentConfig | None, seed: int) -> SiteData:
        """The site's train/val/test splits as `load_site` gives them, without decoding again."""
        split = {name: [r for r in self.records if split_of(r.image_id, DEFAULT_FRACTIONS) == name]
                 for name in ("train", "val", "test")}
        skips = {name: [s for s in self.skipped if split_of(s.image_id, DEFAULT_FRACTIONS) == name]
                 for name in ("train", "val", "test")}
        return SiteData(self.manifest, self.dataset(split["train"], augment_train, seed, skips["train"]),
                        self.dataset(split["val"], None, seed, skips["val"]),
                        self.dataset(split["test"], None, seed, skips["test"]))


def concatenate(parts: list[BoneAgeDataset | StackedViews]) -> BoneAgeDataset | StackedViews:
    """Decoded splits joined into one dataset without decoding again (each view joined for stacked views)."""
    from core.data.views import StackedViews

    if all(isinstance(part, StackedViews) for part in parts):
        return StackedViews([concatenate([part.views[v] for part in parts]) for v in range(len(parts[0].views))])
    first = parts[0]
    decoded = DecodedSplit([r for part in parts for r in part.records],
                           np.concatenate([part.images for part in parts]), [s for part in parts for s in part.skipped])
    return BoneAgeDataset([], first.image_size, None, first.seed, decoded=decoded)
