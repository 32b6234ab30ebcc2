"""Phantom hands in the canonical pose (left hand, fingers up, bone bright) for the preprocessing tests."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from sim.phantom.profiles import PRESETS
from sim.phantom.synth import synthesize

SIDE = 128


def canonical_profile(collimation: float = 0.0, markers: float = 0.0):
    """The RSNA preset without rotation, mirroring, inversion (and, by default, collimation or markers)."""
    base = PRESETS["rsna"].with_image_size(SIDE)
    return replace(base, scanner=replace(base.scanner, inverted_fraction=0.0),
                   acquisition=replace(base.acquisition, rotation_deg=0.0, rotation_90_fraction=0.0,
                                       mirror_fraction=0.0, collimation_fraction=collimation,
                                       marker_fraction=markers))


@pytest.fixture(scope="session")
def phantom_hands():
    """Six canonical phantom samples (image, mask, key points), bone ages spread by the seed."""
    profile = canonical_profile()
    return [synthesize(profile, seed=3, index=i) for i in range(6)]


@pytest.fixture(scope="session")
def site_hands() -> list[np.ndarray]:
    """Twenty canonical phantom images: a folder large enough for the orientation self-check."""
    return [synthesize(canonical_profile(), seed=11, index=i).image for i in range(20)]


@pytest.fixture(scope="session")
def phantom_image(phantom_hands) -> np.ndarray:
    return phantom_hands[0].image
