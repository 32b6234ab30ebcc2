"""One synthetic radiograph, derived only from (profile, seed, index)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from sim.phantom.acquisition import add_noise, blur, burn_marker, collimate, expose, place
from sim.phantom.anatomy import build_hand
from sim.phantom.population import Subject, read_label, sample_subject
from sim.phantom.profiles import SiteProfile
from sim.phantom.render import draw, upsample2


@dataclass(frozen=True)
class Sample:
    """An image with its ground truth.

    Attributes:
        subject: sex, chronological age and true bone age.
        label: the reader's label in the site's unit.
        image: (S, S) float32 grey levels in [0, 1], bone bright (polarity not yet applied).
        inverted: whether the site stores this image with inverted polarity.
        mask: (S, S) bool, the visible hand and forearm.
        keypoints: (3, 2) pixel (x, y) of the tip of the 3rd distal phalanx, thumb tip, capitate centre.
    """

    subject: Subject
    label: int
    image: np.ndarray
    inverted: bool
    mask: np.ndarray
    keypoints: np.ndarray


def synthesize(profile: SiteProfile, seed: int, index: int, subject: Subject | None = None) -> Sample:
    """Draw subject, label, hand, placement and scanner effects from one random stream.

    The stream is seeded by (seed, index, site name), so sites sharing a seed are still independent.
    ``subject`` replaces the drawn one (same random stream otherwise), e.g. to image a chosen bone age.
    """
    rng = np.random.default_rng([seed, index, zlib.crc32(profile.name.encode())])
    scanner, acq = profile.scanner, profile.acquisition
    drawn = sample_subject(profile.population, rng)
    subject = drawn if subject is None else subject
    label = read_label(profile.labelling, subject.bone_age_months, profile.population.age_range_months, rng)
    hand = build_hand(subject.bone_age_months, subject.male, rng)
    size = scanner.image_size
    placement = place(hand, acq, size, rng)
    bone = np.zeros((size, size), dtype=np.float32)
    draw(bone, *hand.bones.transformed(placement.matrix, placement.offset), combine="add")
    half = np.zeros(((size + 1) // 2, (size + 1) // 2), dtype=np.float32)  # smooth: drawn at half resolution
    draw(half, *hand.soft.transformed(0.5 * placement.matrix, 0.5 * placement.offset), combine="max")
    soft = upsample2(half, size)
    soft *= 2.0
    mask = soft > 0.0
    keypoints = placement.apply(hand.keypoints)
    image = expose(bone, soft, placement.scale, scanner, rng)
    if rng.random() < acq.collimation_fraction:
        collimate(image, mask, keypoints, acq, rng)
    if rng.random() < acq.marker_fraction:
        burn_marker(image, mask, "R" if placement.mirrored else "L", rng)
    image = add_noise(blur(image, scanner.blur_px * size / 256.0), scanner.noise, rng)
    inverted = bool(rng.random() < scanner.inverted_fraction)
    return Sample(subject=subject, label=label, image=image, inverted=inverted, mask=mask, keypoints=keypoints)
