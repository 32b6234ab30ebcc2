"""The preprocessing pipeline: size check, noise gate, canonical pose, hand mask, exposure, CLAHE, registration, regions.

``Preprocessor(config)(image)`` takes a decoded 2-D float32 image in [0, 1] (any size, as `core.data.read_image`
returns it) and gives a `PreprocessResult`: the canonical image, quality flags, a confidence and, when the image
cannot be read reliably, a one-line refusal reason. Refused images are never scored: training skips them and
prediction reports them, with the reason, counted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import cv2
import numpy as np

from core.errors import ConfigError
from core.preprocess.config import (INVERTED, LOW_CONFIDENCE, MIRRORED, NO_HAND, REGISTRATION_FAILED, ROTATED,
                                    PreprocessConfig)
from core.preprocess.contrast import equalize
from core.preprocess.field import COLLIMATOR, inpaint_markers, removed_bands
from core.preprocess.handmask import load_hand_mask_cached
from core.preprocess.landmarks import KEYPOINTS, load_localiser_cached, observed_points
from core.preprocess.noise import noise_refusal
from core.preprocess.orientation import OrientationModel, load_cached
from core.preprocess.polarity import settled_polarity
from core.preprocess.pose import Pose, undo_pose
from core.preprocess.quality import exposure_flags, size_flags
from core.preprocess.register import (MCP3_Y, MIN_LOCALISED_AXIS, WRIST_Y, crop_to_mask, keypoints_from_mask,
                                      localised_keypoints, plausible, region_crop, registration_matrix, regions,
                                      warp)
from core.preprocess.segment import Segmentation, hand_mask

logger = logging.getLogger(__name__)

SMALL_ANGLE_MIN_DEG = 3.0  # estimated small rotations below this are left alone (estimation noise)


@dataclass
class PreprocessResult:
    """What preprocessing made of one image.

    Attributes:
        image: the canonical image, 2-D float32 in [0, 1] (the input unchanged in size when nothing was refused
            and no registration ran; the settings' region crop of the registered image when they name one).
        flags: quality flags (see `core.preprocess.config.FLAGS`).
        confidence: how sure the orientation model is of the pose it undid (1.0 when it did not run).
        refused: a one-line reason when the image must not be used, else None.
        regions: region crops of the registered image (empty unless asked for).
        pose: the pose that was undone.
        keypoints: key point name -> (x, y) as fractions of the input image's width and height (empty unless the
            settings name a localiser, and for refused images).
        bands: the kinds of edge band removed before the orientation model looked (`core.preprocess.field`:
            "collimator", "padding"; empty when none was, or ``decollimate`` is off).
    """

    image: np.ndarray
    flags: tuple[str, ...] = ()
    confidence: float = 1.0
    refused: str | None = None
    regions: dict[str, np.ndarray] = field(default_factory=dict)
    pose: Pose = Pose()
    keypoints: dict[str, tuple[float, float]] = field(default_factory=dict)
    bands: tuple[str, ...] = ()


class Preprocessor:
    """Applies one `PreprocessConfig` to images; loads the orientation model once per process."""

    def __init__(self, config: PreprocessConfig) -> None:
        self.config = config.resolved()
        self._orientation: OrientationModel | None = None
        if self.config.canonical:
            self._orientation = load_cached(self.config.weights_path, self.config.orientation_sha256)
        self._localiser = load_localiser_cached(self.config.localiser, self.config.localiser_sha256) \
            if self.config.localiser else None
        self.hand_mask = hand_masker(self.config)

    def __call__(self, image: np.ndarray, polarity_declared: bool = False) -> PreprocessResult:
        """Preprocess one image; ``polarity_declared``: its file declared its polarity (a DICOM's
        PhotometricInterpretation, `core.data.images.declares_polarity`), so it is bone bright and stays so."""
        config = self.config
        image = np.asarray(image, dtype=np.float32)
        if image.ndim != 2:
            raise ValueError(f"preprocessing needs a 2-D image, got shape {image.shape}")
        flags, refused = size_flags(image, config.min_side)
        refused = refused or noise_refusal(image, config.noise_limit if config.noise_gate else 0.0)
        if refused:
            return PreprocessResult(image, flags, 0.0, refused)
        pose, confidence = Pose(), 1.0
        polarity = settled_polarity(image, polarity_declared) \
            if self._orientation is not None and (config.physical_polarity or polarity_declared) else None
        given = image
        image, bands = self._clean_field(image, inverted=polarity is True)
        if self._orientation is not None:
            pose, confidence = self._orientation.predict_checked(image, polarity)
            if not config.small_angle or abs(pose.angle_deg) < SMALL_ANGLE_MIN_DEG:
                pose = Pose(pose.quarter_turns, pose.mirrored, pose.inverted, 0.0)
            if polarity is None and pose.inverted:  # cleaned above in the wrong frame: clean the image as given again
                image, bands = self._clean_field(given, inverted=True)
            image = undo_pose(image, pose)
            flags += _pose_flags(pose)
            refused = _uncertain(confidence, pose, bands, config)
            if refused:
                return PreprocessResult(image, flags + (LOW_CONFIDENCE,), confidence, refused, pose=pose, bands=bands)
        canonical_points = self._localiser.predict(image) if self._localiser is not None else None
        keypoints = self._keypoints(canonical_points, pose, image.shape)
        mask = None
        if config.segment or (config.register and canonical_points is None):  # a localiser needs no mask
            segmentation = self.hand_mask(image)
            if not segmentation.found:
                return PreprocessResult(image, flags + (NO_HAND,), confidence,
                                        f"no hand found (largest foreground region covers {segmentation.share:.0%} "
                                        "of the image)", pose=pose, bands=bands)
            mask = segmentation.mask
        flags += exposure_flags(image, mask, config.exposure_clip, self.hand_mask)
        if config.equalize:
            image = equalize(image, mask, config.clahe_clip, config.clahe_tiles)
        elif config.segment and mask is not None:
            image = np.where(mask, image, 0.0).astype(np.float32)
        if config.register and (mask is not None or canonical_points is not None):
            image, registered = _register(image, mask, config.output_size) if canonical_points is None else \
                _register_localised(image, canonical_points, config.output_size)
            if not registered:
                flags += (REGISTRATION_FAILED,)
                if config.region:
                    return PreprocessResult(image, flags, confidence,
                                            f"registration failed (the {config.region} model reads a crop of the "
                                            "registered hand; the key points of this hand are implausible)",
                                            pose=pose, bands=bands)
        cut = regions(image) if config.regions else {}
        if config.region:
            image = region_crop(image, config.region)
        return PreprocessResult(image, flags, confidence, None, cut, pose, keypoints, bands)

    def _clean_field(self, image: np.ndarray, inverted: bool) -> tuple[np.ndarray, tuple[str, ...]]:
        """Collimator bands, padding and burned-in markers removed (`core.preprocess.field`) before the orientation
        model looks (a band it sees tilts with the small angle it undoes, and then is no longer a band), in the
        bone-bright frame: an image whose polarity was settled as inverted, or that the orientation model names
        inverted, is cleaned as its inverse (black padding cleaned in the wrong frame would come back white).
        Returns the cleaned image and the kinds of band removed."""
        if not (self.config.decollimate or self.config.inpaint_markers):
            return image, ()
        view, bands = 1.0 - image if inverted else image, ()
        if self.config.decollimate:
            view, bands = removed_bands(view)
        if self.config.inpaint_markers:
            view = inpaint_markers(view)
        return (1.0 - view if inverted else view), bands

    @staticmethod
    def _keypoints(canonical_points: np.ndarray | None, pose: Pose,
                   shape: tuple[int, int]) -> dict[str, tuple[float, float]]:
        """The localiser's key points of the canonical image, as fractions of the input image it came from."""
        if canonical_points is None:
            return {}
        points = observed_points(canonical_points, pose, shape)
        return {name: (float(x), float(y)) for name, (x, y) in zip(KEYPOINTS, points)}

    def describe(self) -> dict[str, Any]:
        """The resolved settings (what a checkpoint stores)."""
        return self.config.to_dict()


def hand_masker(config: PreprocessConfig) -> Callable[[np.ndarray], Segmentation]:
    """The hand mask the settings name (`PreprocessConfig.mask`, resolved): the learned U-Net (loaded once per
    process) or the threshold's. Every step that reads a hand mask reads this one: ``segment``, the mask
    registration, the exposure flags and the reading heat map's share outside the hand (`client.reading`)."""
    path = config.mask_path
    return hand_mask if path is None else load_hand_mask_cached(path, config.mask_sha256)


def _uncertain(confidence: float, pose: Pose, bands: tuple[str, ...], config: PreprocessConfig) -> str | None:
    """The refusal of an orientation too uncertain to undo, else None. Mirroring a film whose collimator band was
    removed needs the stricter `collimated_mirror_confidence`: the band may have cut the thumb or the finger tips,
    and the orientation model then takes left hands for right ones (docs/preprocessing.md)."""
    if confidence < config.min_confidence:
        return f"orientation uncertain (confidence {confidence:.2f}, below {config.min_confidence:.2f})"
    if pose.mirrored and COLLIMATOR in bands and confidence < config.collimated_mirror_confidence:
        return (f"mirroring uncertain on a collimated film (confidence {confidence:.2f}, below "
                f"{config.collimated_mirror_confidence:.2f} to mirror a film whose collimator band was removed: the "
                "band may cut the thumb or finger tips)")
    return None


def _pose_flags(pose: Pose) -> tuple[str, ...]:
    flags = []
    if pose.quarter_turns or pose.angle_deg:
        flags.append(ROTATED)
    if pose.mirrored:
        flags.append(MIRRORED)
    if pose.inverted:
        flags.append(INVERTED)
    return tuple(flags)


def _register(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, bool]:
    points = keypoints_from_mask(mask)
    if not plausible(points, image.shape[0]):
        cropped = crop_to_mask(image, mask)
        return np.clip(_fit(cropped, size), 0.0, 1.0), False
    return np.clip(warp(image, registration_matrix(points, size), size), 0.0, 1.0), True


def _register_localised(image: np.ndarray, points: np.ndarray, size: int) -> tuple[np.ndarray, bool]:
    """Registration on the localiser's third MCP joint and wrist (fractions of the canonical image); when they are
    implausible the image is only fitted into the square (the flag says so; a region model refuses it)."""
    h, w = image.shape
    named = {name: (float(x) * w, float(y) * h) for name, (x, y) in zip(KEYPOINTS, points)}
    axis = localised_keypoints(named["mcp3"], named["wrist"])
    if not plausible(axis, h, MIN_LOCALISED_AXIS):
        return np.clip(_fit(image, size), 0.0, 1.0), False
    matrix = registration_matrix(axis, size, MCP3_Y, WRIST_Y)
    return np.clip(warp(image, matrix, size), 0.0, 1.0), True


def _fit(image: np.ndarray, size: int) -> np.ndarray:
    """Centre on a black square keeping the aspect ratio."""
    h, w = image.shape
    ratio = size / max(h, w)
    new_h, new_w = max(1, round(h * ratio)), max(1, round(w * ratio))
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA if ratio < 1 else cv2.INTER_LINEAR)
    canvas = np.zeros((size, size), dtype=np.float32)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    canvas[top:top + new_h, left:left + new_w] = resized
    return canvas


def preprocess_config_of(checkpoint_metadata: dict[str, Any] | None) -> PreprocessConfig | None:
    """The settings a checkpoint's model was trained with; None when it records none (the old behaviour).

    Raises:
        ConfigError: the checkpoint is an ensemble whose members read differently preprocessed images (e.g.
            region crops beside the whole hand): only the paths that read `views_of` (evaluate, predict,
            ensemble) can feed it.
    """
    views = (checkpoint_metadata or {}).get("views") or ()
    if len(views) > 1:
        raise ConfigError(f"this ensemble's members read {len(views)} differently preprocessed views of each image "
                          "(e.g. region crops); only evaluate, predict and ensemble take it, not training, "
                          "calibration or a site")
    settings = (checkpoint_metadata or {}).get("preprocess")
    return PreprocessConfig.from_dict(settings) if settings else None


def views_of(checkpoint_metadata: dict[str, Any] | None) -> tuple[PreprocessConfig | None, ...]:
    """The preprocessing of each input channel: an ensemble's distinct member settings, else the one setting."""
    views = (checkpoint_metadata or {}).get("views")
    if views:
        return tuple(None if view is None else PreprocessConfig.from_dict(view) for view in views)
    return (preprocess_config_of(checkpoint_metadata),)


def preprocessor_for(checkpoint_metadata: dict[str, Any]) -> Preprocessor | None:
    """A `Preprocessor` for the settings a checkpoint records; None when it records none."""
    config = preprocess_config_of(checkpoint_metadata)
    return None if config is None else Preprocessor(config)
