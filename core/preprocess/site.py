"""The site check: what is measured on a site's own images before its folder is preprocessed.

The noise gate's reference (`core.preprocess.noise`): how noisy the site's own films are, so that a film much noisier
than them is refused. And an orientation model the site's own images can trust: a self-check, and a fit on the
site's images when it fails.

A model that names poses correctly agrees with itself: if it says image x is in pose P, it must say that x turned,
mirrored or inverted by Q is in pose Q after P. That needs no labels, so it is measured on the site's own images
before the model is applied to them (`self_agreement`). The packaged model, trained on phantom hands, fails it on
real radiographs (it inverts and mirrors correct images); when it does, a model is fitted, self-supervised, on the
site's own unlabelled images (most of them canonical, as a site's images are) starting from the packaged weights,
cached by the SHA-256 of the images it was fitted on, and checked the same way. A fit that falls short goes on from
its own weights for another round; a model that still fails is not applied: the folder is refused with what to
run instead.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from core.data.config import DataError
from core.data.images import ImageError, read_image
from core.preprocess.config import PreprocessConfig
from core.preprocess.noise import REFERENCE_QUANTILE, site_noise_limit
from core.preprocess.orientation import OrientationModel, load_cached
from core.preprocess.orientation_train import OrientationTrainConfig, fit_orientation, shrink
from core.preprocess.pose import Pose, apply_pose, undo_pose

logger = logging.getLogger(__name__)
T = TypeVar("T")

MIN_AGREEMENT = 0.95  # share of posed copies whose pose the model names consistently with the image's own
MIN_SITE_IMAGES = 16  # fewer images cannot tell a trustworthy model from a lucky one: the check is skipped
CHECK_IMAGES = 64  # images of the site the check looks at (evenly spread over the folder)
FITTED_CHECK = (256, 4)  # a fitted model, near the bar, is measured closer: images (evenly spread), copies each
FIT_MAX_IMAGES = 2000  # images of the site a fit reads (and hashes)
FIT = OrientationTrainConfig(steps=400, batch_size=32, lr=1e-3)  # steps: at least this, 4 per image up to FIT_MAX_STEPS
FIT_MAX_STEPS = 1500
FIT_MORE = OrientationTrainConfig(steps=500, batch_size=32, lr=1e-3)  # a fit still under the bar goes on this much
FIT_ROUNDS = 2  # fits in all (the first, then FIT_MORE from its weights) before the folder is refused
_PROBE = (np.arange(12, dtype=np.float32).reshape(3, 4) + 1.0) / 14.0  # asymmetric: tells every pose apart


def same_image(first: tuple[Pose, Pose], second: tuple[Pose, Pose]) -> bool:
    """Whether two (applied, undone) pose pairs leave the same image, small angles aside."""
    def net(applied: Pose, undone: Pose) -> np.ndarray:
        coarse = Pose(undone.quarter_turns, undone.mirrored, undone.inverted)
        return undo_pose(apply_pose(_PROBE, applied), coarse)
    a, b = net(*first), net(*second)
    return a.shape == b.shape and bool(np.allclose(a, b, atol=1e-4))  # 1 - (1 - x) is not always x in float32


def random_coarse_pose(rng: np.random.Generator) -> Pose:
    """A quarter turn, mirroring and inversion drawn at random, never the identity."""
    while True:
        pose = Pose(int(rng.integers(4)), bool(rng.random() < 0.5), bool(rng.random() < 0.5))
        if not pose.is_identity:
            return pose


def self_agreement(model: OrientationModel, images: list[np.ndarray], seed: int, copies: int = 2) -> float:
    """Share of random posed copies whose named pose is consistent with the pose named for the image itself."""
    rng = np.random.default_rng(seed)
    agree, n = 0, 0
    for image in images:
        own, _ = model.predict(image)
        for _ in range(copies):
            applied = random_coarse_pose(rng)
            named, _ = model.predict(apply_pose(image, applied))
            agree += same_image((applied, named), (Pose(), own))
            n += 1
    return agree / max(n, 1)


def cache_dir() -> Path:
    """Where fitted orientation models are kept: $OSSIFL_CACHE/orientation, else ~/.cache/ossifl/orientation."""
    root = os.environ.get("OSSIFL_CACHE") or Path.home() / ".cache" / "ossifl"
    return Path(root) / "orientation"


def _spread(items: list[T], n: int) -> list[T]:
    if len(items) <= n:
        return list(items)
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, n)]


def _read(paths: list[Path]) -> tuple[list[np.ndarray], str]:
    """The readable images (shrunk) and the SHA-256 of their files' names and bytes."""
    digest = hashlib.sha256()
    images = []
    for path in paths:
        try:
            image = read_image(path)
        except ImageError as exc:
            logger.warning("site check: skipped %s", exc)
            continue
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
        images.append(shrink(image))
    return images, digest.hexdigest()


def _refusal(config: PreprocessConfig, agreement: float, what: str) -> DataError:
    return DataError(
        f"the orientation model ({what}) does not agree with itself on these images: {agreement:.1%} of turned, "
        f"mirrored or inverted copies named consistently, {MIN_AGREEMENT:.0%} needed; it would damage them. Train one "
        "on the site's images (python -m client train-orientation --data DIR --out orientation.pt) and pass "
        "--preprocess default,orientation_weights=orientation.pt, or, if every image is known to be upright, left "
        "and bone-bright, --preprocess default,canonical=false")


def orientation_for_site(config: PreprocessConfig, paths: list[Path], seed: int = 0,
                         fit: bool = True) -> tuple[PreprocessConfig, dict[str, Any]]:
    """The settings to apply to the images at ``paths``: the noise gate's limit measured on them (replacing the one a
    model's recorded settings carry), and the orientation model checked, or fitted, on them.

    Returns the resolved settings (``noise_limit`` filled, ``orientation_weights`` replaced by the fitted file when a
    fit ran) and what the check found (the noise reference under "noise"). ``fit=False`` (a model's recorded
    preprocessing) refuses instead of fitting.

    Raises:
        DataError: the model fails the check and cannot be fitted (or ``fit`` is off), in one line with what to run.
    """
    config, noise = _with_noise_limit(config.resolved(), paths)
    if not config.canonical or not config.site_check:
        return config, {"checked": False, **noise}
    check_images, _ = _read(_spread(paths, CHECK_IMAGES))
    if len(check_images) < MIN_SITE_IMAGES:
        logger.warning("orientation self-check skipped: %d readable images, it needs %d", len(check_images),
                       MIN_SITE_IMAGES)
        return config, {"checked": False, "n_images": len(check_images), **noise}
    model = load_cached(config.weights_path, config.orientation_sha256)
    agreement = self_agreement(model, check_images, seed)
    report: dict[str, Any] = {"checked": True, "n_images": len(check_images), "agreement": round(agreement, 3),
                              **noise}
    logger.info("orientation self-check on %d of the site's images: %.1f%% agreement (needs %.0f%%)",
                len(check_images), 100 * agreement, 100 * MIN_AGREEMENT)
    if agreement >= MIN_AGREEMENT:
        return config, report
    if not fit or not config.site_fit:
        raise _refusal(config, agreement, config.orientation_weights)
    images, digest = _read(_spread(paths, FIT_MAX_IMAGES))
    fitted_check = _spread(images, FITTED_CHECK[0])  # 95 % within about 3.4 points on 128 copies, 1.2 on 1,024
    fitted: Path | None = None
    steps = 0
    for round_ in range(FIT_ROUNDS):  # a fit that falls short goes on from its own weights, up to FIT_ROUNDS fits
        budget = _budget(len(images), round_)
        fitted = _fitted_model(config, images, digest, budget, fitted)
        steps += budget.steps
        fitted_config = PreprocessConfig.from_dict({**config.to_dict(), "orientation_weights": str(fitted),
                                                    "orientation_sha256": ""}).resolved()
        model = load_cached(fitted_config.weights_path, fitted_config.orientation_sha256)
        fitted_agreement = self_agreement(model, fitted_check, seed + 1, copies=FITTED_CHECK[1])
        logger.info("orientation model fitted on the site's images (%s, %d steps): %.1f%% agreement", fitted, steps,
                    100 * fitted_agreement)
        if fitted_agreement >= MIN_AGREEMENT:
            break
    report.update(fitted=str(fitted), fitted_agreement=round(fitted_agreement, 3), fit_steps=steps,
                  fitted_checked=len(fitted_check) * FITTED_CHECK[1])
    if fitted_agreement < MIN_AGREEMENT:
        raise _refusal(config, fitted_agreement, f"fitted on these images for {steps} steps in {FIT_ROUNDS} rounds, "
                                                 f"{fitted}")
    return fitted_config, report


def _with_noise_limit(config: PreprocessConfig, paths: list[Path]) -> tuple[PreprocessConfig, dict[str, Any]]:
    """The settings with the noise gate's limit measured on the site's images (`PreprocessConfig.for_folder`,
    replacing a model's recorded one), and what was measured; unchanged when the gate is off."""
    if not config.noise_gate:
        return config, {}
    noise = site_noise_limit(paths, config.noise_margin)  # cached: for_folder reads it back without measuring
    config = config.for_folder(paths)
    if not noise["limit"] and config.noise_limit:  # too few images for the site's own: the recorded one stays
        noise = {**noise, "limit": config.noise_limit, "recorded": True}
    logger.info("noise gate: %s", describe_noise(noise))
    return config, {"noise": noise}


def describe_noise(noise: dict[str, Any]) -> str:
    """One line for a person: the noise limit measured on the site's images."""
    if noise.get("recorded"):
        return (f"films with noise SD above {noise['limit']:.4f} refused (the model's recorded limit: "
                f"{noise['n_images']} readable images are too few for the site's own reference)")
    if not noise.get("limit"):
        return f"noise gate off ({noise['n_images']} readable images; the site's reference needs more)"
    return (f"films with noise SD above {noise['limit']:.4f} refused ({noise['limit'] / noise['reference']:.2f} x "
            f"{noise['reference']:.4f}, the {100 * REFERENCE_QUANTILE:.0f}th percentile over {noise['n_images']} of "
            "the site's images)")


def describe_check(report: dict[str, Any]) -> str:
    """One line for a person: what the self-check found and what was applied."""
    noise = f"; {describe_noise(report['noise'])}" if "noise" in report else ""
    if not report.get("checked"):
        return "orientation self-check not run" + (f" ({report['n_images']} images; it needs {MIN_SITE_IMAGES})"
                                                   if "n_images" in report else "") + noise
    line = f"orientation self-check on {report['n_images']} images: {report['agreement']:.1%} agreement"
    if "fitted" in report:
        line += (f" (below {MIN_AGREEMENT:.0%}); fitted on these images ({report['fit_steps']} steps): "
                 f"{report['fitted_agreement']:.1%} of {report['fitted_checked']} copies, {report['fitted']}")
    return line + noise


def _budget(n_images: int, round_: int) -> OrientationTrainConfig:
    """The first fit's budget grows with the folder (more images, more to learn); each further one is FIT_MORE."""
    if round_ == 0:
        return replace(FIT, steps=min(FIT_MAX_STEPS, max(FIT.steps, 4 * n_images)))
    return replace(FIT_MORE, seed=FIT_MORE.seed + round_)  # fresh batches and poses each round


def _fitted_model(config: PreprocessConfig, images: list[np.ndarray], data_digest: str, budget: OrientationTrainConfig,
                  previous: Path | None) -> Path:
    """The model fitted on ``images`` from ``previous`` (else the configured weights), read from the cache if made.

    The cache key chains the images' digest, the starting weights and every budget, so a model fitted further is
    never taken for the first fit, nor one fitted with another budget for this one.
    """
    origin = previous.stem if previous is not None else f"{data_digest} {config.orientation_sha256}"
    key = hashlib.sha256(f"{origin} {budget}".encode()).hexdigest()[:20]
    out = cache_dir() / f"site-{key}.pt"
    if out.is_file():
        logger.info("orientation model for these images found in the cache: %s", out)
        return out
    logger.info("fitting an orientation model on %d of the site's own images (self-supervised, no labels; %d steps, "
                "a minute or a few; cached in %s)", len(images), budget.steps, out.parent)
    held_out = images[:max(2, len(images) // 10)]
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial")
    fit_orientation(images, held_out, partial, budget, trained_on=[f"site images, SHA-256 {data_digest}"],
                    init=previous if previous is not None else config.weights_path)
    partial.replace(out)
    return out
