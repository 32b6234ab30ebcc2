"""In-memory PyTorch dataset of one split: decode once, augment per item, deterministically.

Each image is decoded once at construction, min-max stretched to the full 8-bit range
(so a site's bit depth and exposure window do not matter), resized keeping its aspect
ratio, centred on a black square and stored as uint8: 10k images at 128 px take ~220 MB
when augmenting (147 px canvas), ~165 MB otherwise.

Items are normalised as ``(x - 0.5) / 0.25`` with x in [0, 1], so background is -2 and
white bone +2. Augmentation is seeded from (seed, epoch, index): two runs with the same
seed see identical images in every epoch, with any number of workers. Call
``set_epoch`` before each epoch (and rebuild worker processes, as a DataLoader without
persistent workers does) to draw new augmentations.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from core.data.config import DataError
from core.data.images import ImageError, declares_polarity, read_image
from core.data.manifest import Record, Skip
from core.data.memory import check_decoded_fit

if TYPE_CHECKING:
    import albumentations as A

logger = logging.getLogger(__name__)


class Preprocessing(Protocol):
    """What decoding needs of a preprocessing; `core.preprocess.PreprocessConfig` is one. core.data imports
    nothing of core.preprocess (which reads its images through core.data): the preprocessing builds its own
    pipeline, a function of one image returning a result with `.image` and `.refused`."""

    def preprocessor(self) -> Callable[[np.ndarray], Any]: ...

    def resolved(self) -> "Preprocessing": ...

    def for_folder(self, paths: list[Path]) -> "Preprocessing": ...

    def to_dict(self) -> dict[str, Any]: ...

NORM_MEAN = 0.5
NORM_STD = 0.25
CROP_MARGIN = 1.15  # stored canvas / crop size when random crops are on
MAX_NOISE_SD = 0.5  # of the full range: more is no longer an image


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation; a zero turns a transform off.

    Flips are off by default: a flipped left hand looks like a right hand, which a
    bone-age radiograph never is (the standard is the non-dominant, left hand).

    Attributes:
        crop: random crop of ``image_size`` from a canvas 15% larger (same scale as eval).
        rotate_deg: maximum rotation either way, in degrees.
        scale: maximum relative zoom either way (0.1 = 90%-110%).
        brightness: maximum brightness change, as a fraction of the full range.
        contrast: maximum relative contrast change.
        hflip: horizontal flip with probability 0.5.
        noise_sd: (low, high) standard deviation of additive Gaussian noise, drawn uniformly per image, as a fraction
            of the full range of the model's input; (0, 0): off (the default). Added last, to the image as the model
            reads it (after any preprocessing, resizing and the other transforms): noise reaches the model amplified
            by equalisation (CLAHE roughly triples it) and averaged away by downsizing, so its size is defined where
            the model sees it (docs/benchmarks.md, "Noise, the model's side").
        noise_p: probability that an image gets noise, when ``noise_sd`` is on.
    """

    crop: bool = True
    rotate_deg: float = 10.0
    scale: float = 0.1
    brightness: float = 0.2
    contrast: float = 0.2
    hflip: bool = False
    noise_sd: tuple[float, float] = (0.0, 0.0)
    noise_p: float = 0.5

    def __post_init__(self) -> None:
        if min(self.rotate_deg, self.scale, self.brightness, self.contrast) < 0 or self.scale >= 1:
            raise DataError(f"augmentation limits must be >= 0 (and scale < 1): {self}")
        low, high = self.noise_sd
        if not 0 <= low <= high <= MAX_NOISE_SD:
            raise DataError(f"noise SD range must satisfy 0 <= low <= high <= {MAX_NOISE_SD} (a fraction of the full "
                            f"range), got {low} {high}")
        if not 0 <= self.noise_p <= 1:
            raise DataError(f"noise probability must be between 0 and 1, got {self.noise_p}")

    @property
    def noise_on(self) -> bool:
        """Whether any image can get noise."""
        return self.noise_sd[1] > 0 and self.noise_p > 0


def build_augment(config: AugmentConfig, image_size: int) -> A.Compose:
    """Albumentations pipeline mapping a stored uint8 canvas to an ``image_size`` square."""
    import albumentations as A  # local: 0.5 CPU s to import, paid only by a process that augments images

    transforms: list[A.BasicTransform] = []
    if config.rotate_deg > 0 or config.scale > 0:
        transforms.append(A.Affine(
            rotate=(-config.rotate_deg, config.rotate_deg),
            scale=(1 - config.scale, 1 + config.scale),
            border_mode=cv2.BORDER_CONSTANT, fill=0, p=1.0,
        ))
    if config.crop:
        transforms.append(A.RandomCrop(image_size, image_size))
    if config.brightness > 0 or config.contrast > 0:
        transforms.append(A.RandomBrightnessContrast(config.brightness, config.contrast, p=1.0))
    if config.hflip:
        transforms.append(A.HorizontalFlip(p=0.5))
    if config.noise_on:  # last: the other transforms draw what they drew without it
        transforms.append(A.GaussNoise(std_range=config.noise_sd, mean_range=(0.0, 0.0), p=config.noise_p))
    return A.Compose(transforms)


def fit_to_square(image: np.ndarray, content_size: int, canvas_size: int) -> np.ndarray:
    """Stretch to [0, 255], resize so the longer side is ``content_size``, centre on a black canvas.

    Args:
        image: 2-D float array (as from ``read_image``), not constant.
        content_size: longer side of the resized image.
        canvas_size: side of the square output, >= ``content_size``.

    Returns:
        uint8 array of shape (canvas_size, canvas_size).
    """
    low, high = float(image.min()), float(image.max())
    h, w = image.shape
    ratio = content_size / max(h, w)
    new_h, new_w = max(1, round(h * ratio)), max(1, round(w * ratio))
    interpolation = cv2.INTER_AREA if ratio < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image.astype(np.float32, copy=False), (new_w, new_h), interpolation=interpolation)
    stretched = (resized - low) * (255.0 / (high - low))  # after resizing: same result, fewer pixels
    canvas = np.zeros((canvas_size, canvas_size), dtype=np.uint8)
    top, left = (canvas_size - new_h) // 2, (canvas_size - new_w) // 2
    canvas[top:top + new_h, left:left + new_w] = np.clip(np.rint(stretched), 0, 255).astype(np.uint8)
    return canvas


@dataclass(frozen=True)
class DecodedSplit:
    """A split's decoded uint8 images (N, C, C), the N records they belong to and the records skipped."""

    records: list[Record]
    images: np.ndarray
    skipped: list[Skip]


def canvas_size(image_size: int, augment: AugmentConfig | None) -> int:
    """Side of the stored images: the model input, or 15% more when training crops are drawn from them."""
    return round(image_size * CROP_MARGIN) if augment is not None and augment.crop else image_size


def refusal_reason(refused: str) -> str:
    """The counted reason of a refusal ("refused: no hand found"), without the image's particulars."""
    return "refused: " + refused.split(" (")[0]


def refusal_detail(refused: str) -> str:
    """The image's particulars of a refusal: the text in its parentheses ("" when there is none)."""
    return refused.partition(" (")[2].removesuffix(")")


def decode_records(records: list[Record], image_size: int, canvases: tuple[int, ...], progress: bool,
                   preprocess: Preprocessing | None) -> tuple[list[Record], dict[int, np.ndarray], list[Skip]]:
    """Read and preprocess each record once; its image fitted to each canvas. Returns (kept records, canvas ->
    uint8 images (N, C, C), skipped records)."""
    for canvas in canvases:
        check_decoded_fit(len(records), canvas, image_size)
    images = {canvas: np.zeros((len(records), canvas, canvas), dtype=np.uint8) for canvas in canvases}
    kept: list[int] = []
    skipped: list[Skip] = []
    preprocessor = None
    if preprocess is not None and records:
        preprocessor = preprocess.preprocessor()
    for i, record in enumerate(tqdm(records, desc="decoding images", unit="img", disable=not progress)):
        try:
            image = read_image(record.path)
        except ImageError as exc:
            skipped.append(Skip(record.image_id, exc.reason, exc.detail))
            continue
        if preprocessor is not None:
            result = preprocessor(image, declares_polarity(record.path))
            if result.refused is not None:
                skipped.append(Skip(record.image_id, refusal_reason(result.refused), refusal_detail(result.refused)))
                continue
            image = result.image
            if image.max() <= image.min():
                skipped.append(Skip(record.image_id, "refused: constant after preprocessing", ""))
                continue
        for canvas, stack in images.items():
            stack[i] = fit_to_square(image, image_size, canvas)
        kept.append(i)
    if len(kept) < len(records):
        images = {canvas: stack[kept] for canvas, stack in images.items()}
    return [records[i] for i in kept], images, skipped


def _decode(records: list[Record], image_size: int, canvas: int, progress: bool,
            preprocess: Preprocessing | None) -> DecodedSplit:
    kept, images, skipped = decode_records(records, image_size, (canvas,), progress, preprocess)
    return DecodedSplit(kept, images[canvas], skipped)


class BoneAgeDataset(Dataset):
    """Images, ages and sexes of one split, decoded once and held in memory.

    Attributes:
        records: the records kept (those whose image decoded), in input order.
        skipped: records left out because their image could not be used (or preprocessing refused it).
        images: uint8 array (N, C, C); C is ``image_size`` or 15% more when cropping.
        augment: the training augmentation (None: items are the stored images as they are).
    """

    def __init__(self, records: list[Record], image_size: int, augment: AugmentConfig | None = None,
                 seed: int = 0, progress: bool = False, decoded: DecodedSplit | None = None,
                 preprocess: Preprocessing | None = None) -> None:
        """Decode `records` (preprocessed by `preprocess` when given: `core.preprocess`); or, given `decoded`
        (e.g. read back from a cache), take its images as they are."""
        if image_size < 8:
            raise DataError(f"image size must be at least 8 pixels, got {image_size}")
        self.image_size = image_size
        self.seed = seed
        self.epoch = 0
        self.augment = augment
        self._augment: A.Compose | None = None  # built when an augmented item is first read (never in feature space)
        canvas = canvas_size(image_size, augment)
        if decoded is None:
            decoded = _decode(records, image_size, canvas, progress, preprocess)
            for skip in decoded.skipped:
                logger.warning("skipped image %s: %s %s", skip.image_id, skip.reason, skip.detail)
            logger.info("decoded %d images (%d skipped) into %.1f MB", len(decoded.records),
                        len(decoded.skipped), decoded.images.nbytes / 1e6)
        elif decoded.images.shape[1:] != (canvas, canvas) or len(decoded.images) != len(decoded.records):
            raise DataError(f"decoded images of shape {decoded.images.shape} do not fit {len(decoded.records)} "
                            f"records on a {canvas} px canvas")
        self.images, self.records, self.skipped = decoded.images, decoded.records, decoded.skipped
        self._ages = torch.tensor([r.age_months for r in self.records], dtype=torch.float32)
        self._male = torch.tensor([float(r.male) for r in self.records], dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def ages_months(self) -> torch.Tensor:
        """float32 [N]: the ages, in months, in record order."""
        return self._ages

    @property
    def male_flags(self) -> torch.Tensor:
        """float32 [N]: 1. for a boy, 0. for a girl, in record order."""
        return self._male

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentations of this epoch (no effect without augmentation)."""
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """One item: ``image`` float32 [1, S, S] normalised, ``male`` 0./1., ``age`` in months."""
        image = self.images[index]
        if self.augment is not None:
            if self._augment is None:
                self._augment = build_augment(self.augment, self.image_size)
            item_seed = np.random.SeedSequence((self.seed, self.epoch, index)).generate_state(1)[0]
            self._augment.set_random_seed(int(item_seed))
            image = self._augment(image=image)["image"]
        tensor = torch.from_numpy(np.ascontiguousarray(image)).float()
        tensor = tensor.div_(255.0).sub_(NORM_MEAN).div_(NORM_STD).unsqueeze(0)
        return {"image": tensor, "male": self._male[index], "age": self._ages[index]}


def make_loader(dataset: BoneAgeDataset, batch_size: int, shuffle: bool, seed: int,
                num_workers: int = 0, drop_last: bool = False) -> DataLoader:
    """DataLoader whose order is fixed by ``seed`` (pass e.g. seed + round when rebuilt per round).

    Args:
        dataset: the split to load.
        batch_size: items per batch.
        shuffle: reshuffle at every pass over the loader.
        seed: seeds the shuffling generator.
        num_workers: worker processes; batches are identical for any value.
        drop_last: drop the last incomplete batch.

    Returns:
        A DataLoader yielding dicts of batched tensors; pinned memory when CUDA is available.
    """
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      drop_last=drop_last, generator=generator, pin_memory=torch.cuda.is_available())
