"""Maturity indicators move the right way with bone age and sex; populations and labels as declared."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from sim.phantom import maturity as mat
from sim.phantom.anatomy import build_hand
from sim.phantom.population import read_label, sample_subject
from sim.phantom.profiles import PRESETS, ProfileError, ScannerProfile, get_preset
from sim.phantom.synth import synthesize

AGES = np.arange(0.0, 241.0, 6.0)


@pytest.mark.parametrize("male", [False, True])
def test_carpal_centres_appear_and_grow_with_bone_age(male: bool) -> None:
    series = [mat.indicators(a, male) for a in AGES]
    counts = [s["carpals"] for s in series]
    assert counts == sorted(counts) and counts[0] <= 2 and counts[-1] == 8
    sizes = [s["carpal_size"] for s in series]
    assert all(b >= a for a, b in zip(sizes, sizes[1:])) and sizes[-1] > 0.95


@pytest.mark.parametrize("male", [False, True])
def test_epiphyses_widen_cap_then_fuse(male: bool) -> None:
    series = [mat.indicators(a, male) for a in AGES]
    width = [s["epiphysis_width"] for s in series]
    fused = [s["fusion"] for s in series]
    assert width[0] == 0.0 and all(b >= a for a, b in zip(width, width[1:]))
    assert max(width) > 1.0  # capping: wider than the metaphysis
    assert fused[AGES.tolist().index(96.0)] == 0.0 and fused[-1] == 1.0
    assert all(b >= a for a, b in zip(fused, fused[1:]))


def test_distal_phalanges_fuse_before_the_radius() -> None:
    t = mat.EPIPHYSIS_TIMING
    assert t["distal"][2] < t["proximal"][2] <= t["middle"][2] < t["radius"][2]
    m = t["distal"][3]
    assert mat.fusion(m, *t["distal"][2:]) == 1.0 and mat.fusion(m, *t["radius"][2:]) == 0.0


def test_girls_are_ahead_at_the_same_age() -> None:
    for age in (24.0, 60.0, 120.0, 156.0):
        girl, boy = mat.indicators(age, male=False), mat.indicators(age, male=True)
        assert mat.maturity(age, False) - mat.maturity(age, True) > 6.0
        assert girl["carpals"] >= boy["carpals"] and girl["epiphysis_width"] >= boy["epiphysis_width"]
        assert girl["carpal_size"] > boy["carpal_size"]


def test_sex_matters_through_timing_only() -> None:
    # A boy looks like a girl of the matching maturity, wherever on the scale.
    for boy_age in (30.0, 100.0, 170.0):
        girl_age = mat.maturity(boy_age, male=True)
        assert mat.indicators(boy_age, True) == pytest.approx(mat.indicators(girl_age, False))
    # Ahead by about 1.5-2 years in mid-childhood and puberty (anatomy.md).
    assert 15.0 <= 120.0 - mat.maturity(120.0, True) <= 30.0


def test_skeleton_gains_centres_and_density_with_age() -> None:
    counts = [len(build_hand(a, False, np.random.default_rng(0)).bones.ellipses) for a in (1.0, 30.0, 80.0, 150.0)]
    assert counts == sorted(counts) and counts[-1] > counts[0] + 20
    young, old = (np.asarray(build_hand(a, True, np.random.default_rng(1)).bones.capsules) for a in (20.0, 200.0))
    assert old[:, -1].mean() > young[:, -1].mean()  # density column


def test_images_get_brighter_bones_with_age() -> None:
    profile = PRESETS["peds_referral"].with_image_size(64)
    quiet = replace(profile, scanner=replace(profile.scanner, noise=0.0, exposure_jitter=0.0, background_jitter=0.0))
    young, old = [], []
    for i in range(40):
        s = synthesize(quiet, 0, i)
        (young if s.subject.bone_age_months < 40 else old).append(s.image[s.mask].mean())
    assert young and old and np.mean(old) > np.mean(young)


def test_population_matches_the_rsna_statistics() -> None:
    rng = np.random.default_rng(0)
    subjects = [sample_subject(PRESETS["rsna"].population, rng) for _ in range(4000)]
    male = np.array([s.male for s in subjects])
    ages = np.array([s.bone_age_months for s in subjects])
    assert abs(male.mean() - 0.542) < 0.03
    assert abs(ages[male].mean() - 135.3) < 4 and abs(ages[~male].mean() - 117.9) < 4
    assert ages.min() >= 1.0 and ages.max() <= 228.0


def test_rsna_labels_heap_on_atlas_standards() -> None:
    rng = np.random.default_rng(0)
    labelling = PRESETS["rsna"].labelling
    labels = np.array([read_label(labelling, a, (1.0, 228.0), rng) for a in rng.uniform(12, 216, 4000)])
    assert abs((labels % 12 == 0).mean() - 0.58) < 0.03 and abs((labels % 6 == 0).mean() - 0.81) < 0.03


def test_year_labels_are_whole_years() -> None:
    rng = np.random.default_rng(0)
    labels = [read_label(PRESETS["tongji"].labelling, a, (0.0, 264.0), rng) for a in rng.uniform(0, 264, 500)]
    assert all(isinstance(y, int) and 0 <= y <= 22 for y in labels)


def test_profiles_reject_bad_values() -> None:
    with pytest.raises(ProfileError, match="unknown preset"):
        get_preset("mars")
    with pytest.raises(ProfileError):
        ScannerProfile(file_format="png", bit_depth=12)
    with pytest.raises(ProfileError):
        ScannerProfile(inverted_fraction=1.5)
