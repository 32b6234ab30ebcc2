"""The same images seen through several preprocessings at once (an ensemble of region models and whole-hand models).

Each view is one `BoneAgeDataset` decoded with its own preprocessing; `StackedViews` keeps the images that every
view kept (an image a view refuses, e.g. a failed registration for a region crop, is skipped with that reason)
and gives items whose ``image`` is [views, S, S], channel v preprocessed by view v.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from core.data.config import SiteDataConfig
from core.data.dataset import BoneAgeDataset, Preprocessing
from core.data.manifest import Skip
from core.data.site import SiteData, load_site


class StackedViews(Dataset):
    """Aligned views of one split: the records all views kept, in the first view's order.

    Attributes:
        records: the records every view kept.
        skipped: the records some view left out, once each, with the reason of the first view that did.
    """

    def __init__(self, views: list[BoneAgeDataset]) -> None:
        if not views:
            raise ValueError("StackedViews needs at least one view")
        self.views = views
        positions = [{record.image_id: i for i, record in enumerate(view.records)} for view in views]
        self._index = [[where[record.image_id] for where in positions]
                       for record in views[0].records if all(record.image_id in where for where in positions)]
        self.records = [views[0].records[index[0]] for index in self._index]
        seen: set[str] = set()
        self.skipped: list[Skip] = []
        for view in views:
            for skip in view.skipped:
                if skip.image_id not in seen:
                    seen.add(skip.image_id)
                    self.skipped.append(skip)

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        items = [view[i] for view, i in zip(self.views, self._index[index])]
        return {"image": torch.cat([item["image"] for item in items]), "male": items[0]["male"],
                "age": items[0]["age"]}


def load_site_views(config: SiteDataConfig, image_size: int, views: tuple[Preprocessing | None, ...],
                    splits: tuple[str, ...] = ("train", "val", "test"), progress: bool = False) -> SiteData:
    """`load_site` without augmentation for each view; one view gives its `SiteData` as it is, several give
    `StackedViews` splits (the summary counts an image once, skipped when any view refused it)."""
    sites = [load_site(config, image_size, None, seed=0, progress=progress, splits=splits, preprocess=view)
             for view in views]
    if len(sites) == 1:
        return sites[0]
    return SiteData(manifest=sites[0].manifest, train=StackedViews([s.train for s in sites]),
                    val=StackedViews([s.val for s in sites]), test=StackedViews([s.test for s in sites]))
