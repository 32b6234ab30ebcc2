"""What a checkpoint's model expects of its images, read back in one place: side, preprocessing, TTA.

Every command that feeds a checkpoint images (a site's round, fine-tuning, the federation's central set,
the simulation's test splits, evaluation) reads these through `InputSettings.of`, so a new input setting
is added here once rather than at each reader. A checkpoint written from another (site fine-tuning, the
federation's checkpoints and final model, `client export`, a re-fitted interval) records its parent's settings
(`InputSettings.inherited`): a descendant reads its images and is scored like its parent. A parent that records no
TTA has one-pass descendants.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from core.checkpoint import Checkpoint
from core.preprocess import PreprocessConfig, preprocess_config_of, views_of
from core.predict.tta import TTAConfig, tta_config_of

INHERITED_KEYS = ("preprocess", "tta")
"""The metadata a model derived from a checkpoint takes from it (its side comes with the weights themselves)."""


@dataclass(frozen=True)
class InputSettings:
    """The input side in pixels, the test-time augmentation and (through `preprocess`) the preprocessing."""

    image_size: int
    tta: TTAConfig
    metadata: Mapping[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @classmethod
    def of(cls, checkpoint: Checkpoint) -> "InputSettings":
        """The settings `checkpoint` records (its model's side; no TTA and no preprocessing when it records none)."""
        return cls(int(checkpoint.model.config.image_size), tta_config_of(dict(checkpoint.metadata)),
                   checkpoint.metadata)

    @property
    def preprocess(self) -> PreprocessConfig | None:
        """The preprocessing the model was trained with (None: none recorded). An ensemble whose members read
        different views has no single one: a one-line ConfigError (only evaluate, predict and ensemble feed it)."""
        return preprocess_config_of(dict(self.metadata))

    @property
    def views(self) -> tuple[PreprocessConfig | None, ...]:
        """The preprocessing of each view the model reads (one, or one per member of a region ensemble)."""
        return views_of(dict(self.metadata))

    def inherited(self) -> dict[str, Any]:
        """The settings a model derived from this checkpoint records: its preprocessing and its test-time
        augmentation (the keys the checkpoint itself records; none when it records none)."""
        return {key: self.metadata[key] for key in INHERITED_KEYS if key in self.metadata}
