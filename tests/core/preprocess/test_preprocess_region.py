"""Region models' preprocessing: the setting, the crop of the registered hand, the refusal of a failed registration,
and the decode cache keyed on the region."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from core.data.cache import SiteDataCache
from core.errors import ConfigError
from core.preprocess import REGION_NAMES, PreprocessConfig, Preprocessor
from core.preprocess.register import region_crop
from tests.core.preprocess.test_preprocess_data import _site

NO_POSE = PreprocessConfig(canonical=False)  # the phantoms are canonical: no orientation model needed here


def turned(image: np.ndarray, degrees: float) -> np.ndarray:
    """The image turned about its centre (a hand lying on its side when 90)."""
    side = image.shape[0]
    return cv2.warpAffine(image, cv2.getRotationMatrix2D((side / 2, side / 2), degrees, 0.8), (side, side))


def test_the_region_setting_is_checked_and_travels_as_a_dict() -> None:
    with pytest.raises(ConfigError, match="needs register=true"):
        PreprocessConfig(region="carpal")
    with pytest.raises(ConfigError, match="region must be one of"):
        PreprocessConfig(register=True, region="elbow")
    config = PreprocessConfig().for_region("metacarpal_phalanges")
    assert config.register and config.region == "metacarpal_phalanges"
    assert PreprocessConfig.from_dict(config.to_dict()) == config
    assert PreprocessConfig.parse("default,register=true,region=carpal") == PreprocessConfig().for_region("carpal")
    older = {k: v for k, v in PreprocessConfig(register=True).to_dict().items() if k != "region"}
    assert PreprocessConfig.from_dict(older).region == ""  # checkpoints from before regions read the whole image


def test_a_region_model_reads_its_crop_of_the_registered_hand(phantom_hands) -> None:
    registered = Preprocessor(PreprocessConfig(canonical=False, register=True))
    shapes = {}
    for sample in phantom_hands[:3]:
        whole = registered(sample.image)
        assert whole.refused is None
        for region in REGION_NAMES:
            result = Preprocessor(NO_POSE.for_region(region))(sample.image)
            assert result.refused is None
            np.testing.assert_array_equal(result.image, region_crop(whole.image, region))
            shapes[region] = result.image.shape
    # the boxes as shares of the 256 px registered square, by hand: carpal rows 141-225, columns 77-179;
    # metacarpals and proximal phalanges rows 56-164, columns 31-225
    assert shapes == {"whole_hand": (256, 256), "carpal": (84, 102), "metacarpal_phalanges": (108, 194)}


def test_a_failed_registration_is_refused_by_a_region_model_not_cut_blindly(phantom_image) -> None:
    lying = turned(phantom_image, 60.0)  # the key points no longer describe an upright hand (at 90 degrees the
    # mask key points of either mask lean 27-36 degrees, at the 35 degree bound: docs/preprocessing.md)
    plain = Preprocessor(PreprocessConfig(canonical=False, register=True))(lying)
    assert plain.refused is None and "registration_failed" in plain.flags  # a whole-image model keeps its fallback
    for region in REGION_NAMES:
        result = Preprocessor(NO_POSE.for_region(region))(lying)
        assert result.refused is not None and result.refused.startswith("registration failed (the " + region)
        assert "registration_failed" in result.flags
    assert Preprocessor(NO_POSE.for_region("carpal"))(turned(phantom_image, 20.0)).refused is None


def test_the_decode_cache_keeps_one_entry_per_region(tmp_path: Path, phantom_hands) -> None:
    site = _site(tmp_path / "site", {str(100 + i): s.image for i, s in enumerate(phantom_hands)})
    cache, disk = SiteDataCache(), tmp_path / "state"
    carpal = cache.load(site, 32, None, seed=0, disk_dir=disk, preprocess=NO_POSE.for_region("carpal"))
    hand = cache.load(site, 32, None, seed=0, disk_dir=disk, preprocess=NO_POSE.for_region("whole_hand"))
    again = cache.load(site, 32, None, seed=0, disk_dir=disk, preprocess=NO_POSE.for_region("carpal"))
    assert again is carpal and hand is not carpal and (cache.misses, cache.hits) == (2, 1)
    assert len(list(disk.glob("decoded_*.npz"))) == 2
    assert not np.array_equal(carpal.train.images, hand.train.images)
    other = SiteDataCache()  # a new process: the carpal crops come back from their own file, not a decode
    fresh = other.load(site, 32, None, seed=0, disk_dir=disk, preprocess=NO_POSE.for_region("carpal"))
    assert other.misses == 0
    np.testing.assert_array_equal(fresh.train.images, carpal.train.images)
