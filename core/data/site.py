"""One call from a site's declared layout to its train/val/test datasets and summary."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from core.data.config import SiteDataConfig
from core.data.dataset import AugmentConfig, BoneAgeDataset, Preprocessing, canvas_size
from core.data.manifest import Manifest, Record, Skip, load_manifest, summarize
from core.data.memory import check_decoded_fit
from core.data.split import DEFAULT_FRACTIONS, split_records

logger = logging.getLogger(__name__)


class Split(Protocol):
    """One decoded split: a `BoneAgeDataset`, or several aligned views of it (`core.data.views.StackedViews`,
    which builds on this module: this one does not import it)."""

    records: list[Record]
    skipped: list[Skip]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]: ...


@dataclass
class SiteData:
    """A site's manifest and its three in-memory splits (several aligned views each: `core.data.views`)."""

    manifest: Manifest
    train: Split
    val: Split
    test: Split

    def summary(self) -> dict[str, Any]:
        """Manifest summary updated with decode skips, plus the size of each split."""
        splits = {"train": self.train, "val": self.val, "test": self.test}
        records = [r for d in splits.values() for r in d.records]
        skipped = self.manifest.skipped + [s for d in splits.values() for s in d.skipped]
        summary = summarize(records, skipped, self.manifest.n_images_without_label)
        summary["n_skipped_decode"] = sum(len(d.skipped) for d in splits.values())
        summary["split_sizes"] = {name: len(d) for name, d in splits.items()}
        return summary


def load_site(config: SiteDataConfig, image_size: int, augment_train: AugmentConfig | None,
              seed: int, progress: bool = False, splits: tuple[str, ...] = ("train", "val", "test"),
              preprocess: Preprocessing | None = None) -> SiteData:
    """Read a site's manifest, split it by id and decode every split.

    Args:
        config: the site's declared layout.
        image_size: side of the square model input.
        augment_train: augmentation of the training split (None: none); val/test are never augmented.
        seed: seed of the training augmentation.
        progress: show a progress bar while decoding.
        splits: the splits to decode; the others are left empty (a site evaluating needs only "test").
        preprocess: the preprocessing of the model the data is for (None: none); refused images are skipped
            with their reason. Its noise gate is measured against this site's own images (``for_folder``).

    Returns:
        The site's manifest and datasets.

    Raises:
        DataError: a whole-file problem in the manifest (see ``load_manifest``).
    """
    manifest = load_manifest(config)
    if preprocess is not None:  # a film is refused as noisier than this site's films, not the training site's
        preprocess = preprocess.for_folder([record.path for record in manifest.records])
    groups = split_records(manifest.records, DEFAULT_FRACTIONS)
    check_decoded_fit(sum(len(groups[name]) for name in splits), canvas_size(image_size, augment_train), image_size)

    def decoded(name: str, augment: AugmentConfig | None) -> BoneAgeDataset:
        return BoneAgeDataset(groups[name] if name in splits else [], image_size, augment, seed, progress,
                              preprocess=preprocess)

    site = SiteData(manifest=manifest, train=decoded("train", augment_train), val=decoded("val", None),
                    test=decoded("test", None))
    summary = site.summary()
    logger.info("site %s: %d usable of %d rows, %d skipped %s, splits %s", config.root,
                summary["n_usable"], summary["n_rows"], summary["n_skipped"],
                summary["skipped_by_reason"], summary["split_sizes"])
    return site
