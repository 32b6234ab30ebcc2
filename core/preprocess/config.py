"""Settings of the preprocessing pipeline, stored in a checkpoint's metadata["preprocess"].

A model is trained on images preprocessed one way; every path that reads images for it (pretrain, evaluate,
a site's ClientApp, finetune, predict) must preprocess the same way, so the settings travel with the weights.
A checkpoint without the entry means "no preprocessing" (the behaviour before preprocessing existed).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from core.errors import ConfigError

PACKAGED_WEIGHTS = "phantom"  # the orientation model shipped in core/preprocess/weights/, trained on phantom images
THRESHOLD_MASK = "threshold"  # the hand mask of core/preprocess/segment.py (no learned model)
LEARNED_MASK = "learned"      # the U-Net shipped in core/preprocess/weights/, trained on phantom images and masks
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

# Quality flags: what the pipeline saw and did. "*_fixed" flags describe a repaired image.
ROTATED = "rotated_fixed"
MIRRORED = "mirrored_fixed"
INVERTED = "inverted_fixed"
NO_HAND = "no_hand"
REGISTRATION_FAILED = "registration_failed"
UNDEREXPOSED = "underexposed"
OVEREXPOSED = "overexposed"
TOO_SMALL = "too_small"
LOW_CONFIDENCE = "low_confidence"
FLAGS = (ROTATED, MIRRORED, INVERTED, NO_HAND, REGISTRATION_FAILED, UNDEREXPOSED, OVEREXPOSED, TOO_SMALL,
         LOW_CONFIDENCE)

REGION_NAMES = ("whole_hand", "carpal", "metacarpal_phalanges")


@dataclass(frozen=True)
class PreprocessConfig:
    """Which steps run, with their parameters; defaults are defined here only.

    Attributes:
        canonical: undo quarter turns, small rotations, mirroring and inverted polarity with the orientation model.
        orientation_weights: "phantom" (the packaged file) or the path of a file written by
            ``python -m client train-orientation``.
        orientation_sha256: SHA-256 of that file; filled by ``resolved()`` so a changed file is noticed.
        physical_polarity: settle the polarity (bone bright or inverted) from physical evidence, the background
            level and bone against soft tissue (`core.preprocess.polarity`), before the orientation model's inversion
            head votes; a DICOM's declared PhotometricInterpretation settles it in any case.
        site_check: before a folder is preprocessed (``client preprocess``, ``client check``, ``server pretrain``),
            check on its own images that the orientation model agrees with itself under random turns, mirroring and
            inversion (`core.preprocess.site`); a model that does not is never applied.
        site_fit: when the check fails, fit an orientation model on the folder's own unlabelled images (cached by
            their SHA-256) and apply it if it passes the check; off: refuse the folder, saying what to run.
        small_angle: also undo the small rotation the orientation model estimates (degrees).
        decollimate: set uniform bright bands along the edges (a collimator's unexposed border) and constant bands
            of any level (padding) to the image's darkest level, as the exposed background usually is; a no-op on
            images without such bands (`core.preprocess.field`).
        inpaint_markers: in-paint burned-in text and markers (the brightest level, in thin strokes, in small
            components) from their surroundings before equalisation (`core.preprocess.field`).
        segment: zero the background outside the hand mask (removes collimation, markers, text); refuses an
            image without a hand. Off by default: the threshold segmentation is reliable on the phantom, not on
            real collimated films (docs/preprocessing.md).
        mask: which hand mask ``segment``, the mask registration, the exposure flags and the reading heat map's
            share outside the hand read: "learned" (the packaged U-Net,
            `core.preprocess.handmask`; on real radiographs it holds 99 % of reader-drawn box centres, the threshold
            71 %, docs/preprocessing.md), "threshold" (`core.preprocess.segment`) or the path of a file written by
            ``python -m client train-mask``. Settings recorded before this setting existed read "threshold", the
            mask they were made with.
        mask_sha256: SHA-256 of the learned mask's file; filled by ``resolved()`` (the exposure flags read the mask
            whatever else runs), so a changed file is noticed.
        equalize: contrast-limited adaptive histogram equalisation (CLAHE) inside the hand.
        clahe_clip: CLAHE clip limit.
        clahe_tiles: CLAHE tiles per side.
        register: affine into the standard position from key points of the hand mask.
        output_size: side of the registered (square) image in pixels.
        regions: also cut the region crops (whole hand, carpal, metacarpals and proximal phalanges).
        region: "" (the whole image) or one of REGION_NAMES: the model reads only that crop of the registered
            image; needs ``register``, and an image whose registration fails is refused, never cut blindly.
        localiser: "" (none) or the path of a key-point localiser written by ``python -m client train-localiser``:
            the wrist, distal radius, distal ulna and third MCP found on the canonical image, carried back to the
            input image (`PreprocessResult.keypoints`, the key-point columns of qc.csv).
        localiser_sha256: SHA-256 of that file; filled by ``resolved()``.
        min_side: images whose shorter side is below this (pixels) are refused as too small.
        min_confidence: images whose orientation confidence is below this are refused (0.25 refuses 0.7 % of
            the clean images of the rsna100 validation split with a model trained on its training split).
        collimated_mirror_confidence: the stricter floor for mirroring a film whose collimator band (a uniform
            edge band brighter than the film) was removed before the orientation model looked: the band may have
            cut the thumb or the finger tips, and the model then takes left hands for right ones; such a film named
            mirrored below this confidence is refused (chosen on rsna100's validation split, docs/preprocessing.md).
            Padding (a constant band that is not bright) and every other pose are held to ``min_confidence``.
        exposure_clip: share of pixels at the darkest (brightest) grey level that flags under- (over-) exposure.
        noise_gate: refuse a film much noisier than the site's own films (`core.preprocess.noise`): the site check
            measures the site's reference on its folder and fills ``noise_limit``.
        noise_margin: a film is refused above this many times the site's reference (the 99th percentile of the
            noise estimate over the site's images; chosen on rsna100 and phantom sites, docs/preprocessing.md).
        noise_limit: the noise SD above which a film is refused; 0 (no reference measured) applies no gate.
            Measured on the site's own folder wherever one is read (``for_folder``: the site check, a site's
            decoding); a model's recorded settings carry the limit of its training folder, which applies where no
            folder is read (predict on single images).
    """

    canonical: bool = True
    orientation_weights: str = PACKAGED_WEIGHTS
    orientation_sha256: str = ""
    physical_polarity: bool = True
    site_check: bool = True
    site_fit: bool = True
    small_angle: bool = True
    decollimate: bool = True
    inpaint_markers: bool = True
    segment: bool = False
    mask: str = LEARNED_MASK
    mask_sha256: str = ""
    equalize: bool = True
    clahe_clip: float = 2.0
    clahe_tiles: int = 4
    register: bool = False
    output_size: int = 256
    regions: bool = False
    region: str = ""
    localiser: str = ""
    localiser_sha256: str = ""
    min_side: int = 32
    min_confidence: float = 0.25
    collimated_mirror_confidence: float = 0.9
    exposure_clip: float = 0.4
    noise_gate: bool = True
    noise_margin: float = 1.25
    noise_limit: float = 0.0

    def __post_init__(self) -> None:
        if self.min_side < 8 or self.output_size < 32:
            raise ConfigError(f"preprocess: min_side must be >= 8 and output_size >= 32, got {self.min_side}, "
                            f"{self.output_size}")
        if not 0.0 <= self.min_confidence < 1.0 or not 0.0 < self.exposure_clip <= 1.0:
            raise ConfigError(f"preprocess: min_confidence must be in [0, 1) and exposure_clip in (0, 1], got "
                            f"{self.min_confidence}, {self.exposure_clip}")
        if not 0.0 <= self.collimated_mirror_confidence < 1.0:
            raise ConfigError(f"preprocess: collimated_mirror_confidence must be in [0, 1), got "
                              f"{self.collimated_mirror_confidence}")
        if self.noise_margin < 1.0 or self.noise_limit < 0.0:
            raise ConfigError(f"preprocess: noise_margin must be >= 1 and noise_limit >= 0, got {self.noise_margin}, "
                              f"{self.noise_limit}")
        if self.region and self.region not in REGION_NAMES:
            raise ConfigError(f"preprocess: region must be one of {', '.join(REGION_NAMES)}, got {self.region!r}")
        if self.region and not self.register:
            raise ConfigError(f"preprocess: region={self.region} cuts the registered image; it needs register=true")
        if self.clahe_clip <= 0 or self.clahe_tiles < 1:
            raise ConfigError(f"preprocess: clahe_clip must be > 0 and clahe_tiles >= 1, got {self.clahe_clip}, "
                            f"{self.clahe_tiles}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (what checkpoints store)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PreprocessConfig:
        """Inverse of ``to_dict``; unknown keys are a clear error, missing keys take their defaults, except ``mask``:
        settings recorded before it existed were made with the threshold mask."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"preprocess settings have unknown keys {unknown}; known: {sorted(known)}")
        return cls(**{"mask": THRESHOLD_MASK, **values})

    @classmethod
    def parse(cls, spec: str) -> PreprocessConfig | None:
        """A command-line spec: "none", "default", or "default,key=value,..." (e.g. "default,segment=true").

        Raises:
            ConfigError: an unknown key or a value of the wrong type, in one line.
        """
        name, *pairs = [part.strip() for part in spec.split(",") if part.strip()] or ["none"]
        if name == "none" and not pairs:
            return None
        if name != "default":
            raise ConfigError(f"preprocess spec must start with 'none' or 'default', got {spec!r}")
        types = {f.name: f.type for f in fields(cls)}
        values: dict[str, Any] = {}
        for pair in pairs:
            key, sep, raw = pair.partition("=")
            if not sep or key not in types:
                raise ConfigError(f"preprocess spec: {pair!r} is not key=value with a key among {sorted(types)}")
            values[key] = _convert(key, raw, types[key])
        return cls(**values)

    def for_region(self, region: str) -> PreprocessConfig:
        """The same settings reading only `region` of the registered image (registration switched on)."""
        return type(self)(**{**self.to_dict(), "register": True, "region": region})

    @property
    def mask_path(self) -> Path | None:
        """The learned hand mask's file; None for the threshold mask."""
        if self.mask == THRESHOLD_MASK:
            return None
        return WEIGHTS_DIR / "hand_mask_phantom.pt" if self.mask == LEARNED_MASK else Path(self.mask)

    @property
    def weights_path(self) -> Path:
        """The orientation model's file."""
        if self.orientation_weights == PACKAGED_WEIGHTS:
            return WEIGHTS_DIR / "orientation_phantom.pt"
        return Path(self.orientation_weights)

    def preprocessor(self) -> Any:
        """The pipeline that applies this preprocessing to one image (a `core.preprocess.pipeline.Preprocessor`,
        what `core.data` decodes through without importing core.preprocess)."""
        from core.preprocess.pipeline import Preprocessor  # the pipeline is built on this module

        return Preprocessor(self)

    def for_folder(self, paths: list[Path]) -> PreprocessConfig:
        """The same settings with the noise gate's limit measured on the images at ``paths`` (a site's folder,
        `core.preprocess.noise.site_noise_limit`), replacing any recorded one; unchanged when the gate is off, and
        when the folder has too few readable images for a reference (a recorded limit then stays)."""
        if not self.noise_gate:
            return self
        from core.preprocess.noise import site_noise_limit  # local: the noise module reads images through core.data

        limit = site_noise_limit(paths, self.noise_margin)["limit"]
        return type(self)(**{**self.to_dict(), "noise_limit": limit}) if limit else self

    def resolved(self) -> PreprocessConfig:
        """The same settings with the orientation model's, the localiser's and the learned mask's absolute paths and
        SHA-256 filled in.

        Raises:
            ConfigError: a named file is missing, or is not the one the settings recorded (its SHA-256 differs).
        """
        from core.checkpoint import file_sha256  # local: core.checkpoint imports the model package

        changes: dict[str, str] = {}
        if self.localiser:
            path = Path(self.localiser)
            changes["localiser"] = str(path.resolve())
            changes["localiser_sha256"] = _pinned(file_sha256, path, self.localiser_sha256, "localiser",
                                                  "train one with python -m client train-localiser")
        if self.canonical:
            path = self.weights_path
            changes["orientation_sha256"] = _pinned(
                file_sha256, path, self.orientation_sha256, "orientation model",
                "train one with python -m client train-orientation, or use the packaged 'phantom' weights")
            if self.orientation_weights != PACKAGED_WEIGHTS:
                changes["orientation_weights"] = str(path.resolve())
        path = self.mask_path
        if path is not None:
            changes["mask_sha256"] = _pinned(file_sha256, path, self.mask_sha256, "hand mask model",
                                             "mask is 'threshold', 'learned' or the path of a file written by "
                                             "python -m client train-mask")
            if self.mask != LEARNED_MASK:
                changes["mask"] = str(path.resolve())
        return type(self)(**{**self.to_dict(), **changes})


def _pinned(file_sha256: Any, path: Path, expected: str, what: str, missing_hint: str) -> str:
    """The SHA-256 of the model file at ``path``, which must exist and, when the settings recorded one, match it."""
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path} ({missing_hint})")
    digest = file_sha256(path)
    if expected and digest != expected:
        raise ConfigError(f"{what} {path} is not the one these settings were made with (SHA-256 "
                          f"{digest[:12]}..., expected {expected[:12]}...)")
    return digest


def _convert(key: str, raw: str, kind: str) -> Any:
    """A spec value as the field's type ("bool", "int", "float" or "str", as dataclass annotations spell them)."""
    try:
        if kind == "bool":
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1", "yes")
        return {"int": int, "float": float}.get(kind, str)(raw)
    except ValueError:
        raise ConfigError(f"preprocess spec: {key}={raw!r} is not a {kind}") from None
