"""The noise gate: a film much noisier than the site's own films is refused.

The model reads noise as age (docs/benchmarks.md, "Noise, the model's side"), and no denoising tried helped, so a
film noisier than the images a site usually makes is refused rather than misread. "Noisier" is measured against the
site, not against a fixed level: sites differ (an old CR reader's films are noisier than a flat panel's, and noise
per pixel depends on the resolution), and an absolute level that refuses a noisy copy of a clean film would refuse
half of a noisy site's ordinary films.

The noise of one image is a robust version of Immerkaer's Laplacian estimate (`noise_sd`): the median absolute
response to the 3x3 Laplacian difference mask, which is 6 times the noise SD for white noise, read on the image at
most `NOISE_SIDE` pixels long. The median, unlike Immerkaer's mean, is not raised by edges, burned-in text or
collimator bands, and exactly flat regions (padding) are left out. The site's reference is a high quantile of that
estimate over its own images (`site_noise_limit`, cached by their SHA-256); a film above ``noise_margin`` times it is
refused (`PreprocessConfig.noise_limit`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from core.data.images import ImageError, read_image

logger = logging.getLogger(__name__)

NOISE_SIDE = 512  # images are measured at most this long (area-averaged): a full-size film costs milliseconds
REFERENCE_QUANTILE = 0.99  # of the site's per-image estimates: the noisiest ordinary film, not the single outlier
REFERENCE_IMAGES = 256  # images of the site the reference reads (evenly spread over the folder)
MIN_REFERENCE_IMAGES = 16  # fewer cannot tell a site's noisiest ordinary film: no reference, no gate
_LAPLACIAN = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)  # response SD = 6 x white noise SD
_MAD_TO_SD = 0.6745  # median absolute value of a standard normal
_ESTIMATE_VERSION = "median-laplacian-1"  # part of the cache key: a changed estimate never reads stale references


def noise_sd(image: np.ndarray) -> float:
    """Estimated SD of the image's white noise (full range 1): the median absolute Laplacian response / 6 / 0.6745,
    over the pixels where it is not zero, on the image area-averaged to at most `NOISE_SIDE` pixels long."""
    image = np.asarray(image, dtype=np.float32)
    ratio = NOISE_SIDE / max(image.shape)
    if ratio < 1:
        size = (max(3, round(image.shape[1] * ratio)), max(3, round(image.shape[0] * ratio)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    response = np.abs(cv2.filter2D(image, -1, _LAPLACIAN, borderType=cv2.BORDER_REFLECT)[1:-1, 1:-1])
    response = response[response > 1e-6]  # flat padding has no noise to measure
    return float(np.median(response) / _MAD_TO_SD / 6.0) if response.size else 0.0


def noise_cache_dir() -> Path:
    """Where site noise references are kept: $OSSIFL_CACHE/noise, else ~/.cache/ossifl/noise."""
    from core.preprocess.site import cache_dir  # the orientation cache's root; site imports this module

    return cache_dir().parent / "noise"


def site_noise_limit(paths: list[Path], margin: float) -> dict[str, Any]:
    """The noise limit of the site whose images are ``paths``: ``margin`` times the `REFERENCE_QUANTILE` of
    `noise_sd` over up to `REFERENCE_IMAGES` of them, cached by the SHA-256 of their names and bytes.

    Returns a report: ``limit`` (0.0 when fewer than `MIN_REFERENCE_IMAGES` are readable: no gate), ``reference``,
    ``n_images``.
    """
    chosen = paths if len(paths) <= REFERENCE_IMAGES else \
        [paths[int(i)] for i in np.linspace(0, len(paths) - 1, REFERENCE_IMAGES)]
    digest = hashlib.sha256(f"{_ESTIMATE_VERSION} {NOISE_SIDE}".encode())  # another estimate is measured afresh
    for path in chosen:
        try:
            digest.update(Path(path).name.encode() + b"\0" + Path(path).read_bytes())
        except OSError as exc:  # read_image below says so in one line
            digest.update(f"{Path(path).name} unreadable: {exc.strerror}".encode())
    cached = noise_cache_dir() / f"{digest.hexdigest()[:20]}.json"
    if cached.is_file():
        estimates = json.loads(cached.read_text())["estimates"]
    else:
        estimates = []
        for path in chosen:
            try:
                estimates.append(noise_sd(read_image(path)))
            except ImageError as exc:
                logger.warning("noise reference: skipped %s", exc)
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(".partial")
        partial.write_text(json.dumps({"estimates": estimates}))
        partial.replace(cached)
    if len(estimates) < MIN_REFERENCE_IMAGES:
        logger.warning("noise gate off: %d readable images, the site's reference needs %d", len(estimates),
                       MIN_REFERENCE_IMAGES)
        return {"limit": 0.0, "n_images": len(estimates)}
    reference = float(np.quantile(estimates, REFERENCE_QUANTILE))
    return {"limit": round(margin * reference, 5), "reference": round(reference, 5), "n_images": len(estimates)}


def noise_refusal(image: np.ndarray, limit: float) -> str | None:
    """The refusal of an image noisier than ``limit`` (0: no gate), else None."""
    if limit <= 0:
        return None
    sd = noise_sd(image)
    if sd <= limit:
        return None
    return f"noisier than the site's films (noise SD {sd:.4f}, above the site's limit {limit:.4f})"
