"""The noise gate: a film much noisier than the site's own films is refused; a noisy site keeps its films (phantom)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.checkpoint import load_checkpoint
from core.data import load_manifest, load_site, read_image
from core.data.config import SiteDataConfig
from core.data.dataset import refusal_reason
from core.data.pool import DecodedPool
from core.errors import ConfigError
from core.preprocess import PreprocessConfig, Preprocessor
from core.preprocess import noise as noise_module
from core.preprocess.folder import image_paths
from core.preprocess.noise import MIN_REFERENCE_IMAGES, noise_sd, site_noise_limit
from core.preprocess.pipeline import preprocessor_for
from core.preprocess.site import describe_check, orientation_for_site
from core.preprocess.stress import STRESS, noise
from sim.phantom.profiles import PRESETS
from sim.phantom.synth import synthesize
from sim.phantom.writer import generate_site

SIDE = 128
N_SITE = 24
REFUSED = "refused: noisier than the site's films"
GATE_ONLY = PreprocessConfig(canonical=False)  # the orientation model plays no part here: only the noise gate


def _write(root: Path, images: list[np.ndarray]) -> list[Path]:
    root.mkdir(parents=True)
    paths = []
    for i, image in enumerate(images):
        paths.append(root / f"{i:03d}.png")
        Image.fromarray(np.rint(np.clip(image, 0, 1) * 65535).astype(np.uint16)).save(paths[-1])
    return paths


def _site(preset: str, seed: int, n: int = N_SITE) -> list[np.ndarray]:
    profile = PRESETS[preset].with_image_size(SIDE)
    return [synthesize(profile, seed=seed, index=i).image for i in range(n)]


@pytest.fixture(scope="module")
def clean_site(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[np.ndarray]]:
    """A clean site (the flat-panel `tongji` preset) and its films."""
    images = _site("tongji", seed=5)
    return _write(tmp_path_factory.mktemp("noise") / "tongji", images), images


@pytest.fixture(scope="module")
def noisy_site(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[np.ndarray]]:
    """A noisy site (the old CR reader of `rural_cr`) and more of its films, not among the folder's."""
    images = _site("rural_cr", seed=6, n=N_SITE + 16)
    return _write(tmp_path_factory.mktemp("noise") / "rural_cr", images[:N_SITE]), images[N_SITE:]


def _refused(preprocessor: Preprocessor, images: list[np.ndarray]) -> int:
    return sum(preprocessor(image).refused is not None for image in images)


def test_the_estimate_follows_white_noise_and_ignores_edges_and_text() -> None:
    rng = np.random.default_rng(0)
    ramp = np.tile(np.linspace(0.2, 0.8, 200, dtype=np.float32), (160, 1))
    for sd in (0.01, 0.03, 0.08):
        assert noise_sd(ramp + rng.normal(0, sd, ramp.shape).astype(np.float32)) == pytest.approx(sd, rel=0.1)
    blocks = np.kron(rng.random((16, 20)) > 0.5, np.ones((10, 10))).astype(np.float32) * 0.5 + 0.2
    for clean in (ramp, blocks):  # a block's edges (bones, text, collimator bands) are not noise
        noisy = clean + rng.normal(0, 0.01, clean.shape).astype(np.float32)
        assert noise_sd(noisy) == pytest.approx(0.01, rel=0.15)
    padded = np.pad(noisy, 150)  # a film fitted into a square with black padding: the padding is left out
    assert noise_sd(padded) == pytest.approx(noise_sd(noisy), rel=0.15)
    assert noise_sd(np.zeros((64, 64), np.float32)) == 0.0


def test_a_noisy_film_at_a_clean_site_is_refused_and_counted(clean_site) -> None:
    paths, images = clean_site
    config, report = orientation_for_site(GATE_ONLY, paths)
    assert config.noise_limit == report["noise"]["limit"] > 0
    assert "noise SD above" in describe_check(report)
    preprocessor = Preprocessor(config)
    assert _refused(preprocessor, images) == 0
    noisy = [noise(image, np.random.default_rng([1, i])) for i, image in enumerate(images)]
    results = [preprocessor(image) for image in noisy]
    assert all(refusal_reason(r.refused) == REFUSED for r in results if r.refused)
    assert sum(r.refused is not None for r in results) == len(noisy)
    milder = [noise(image, np.random.default_rng([2, i]), sd=0.02) for i, image in enumerate(images)]
    assert _refused(preprocessor, milder) == len(milder)


def test_a_noisy_site_keeps_its_films_and_still_refuses_noisier_copies(noisy_site, clean_site) -> None:
    paths, more = noisy_site
    config, _ = orientation_for_site(GATE_ONLY, paths)
    preprocessor = Preprocessor(config)
    assert _refused(preprocessor, more) == 0  # films of the site the reference never read
    noisier = [noise(image, np.random.default_rng([3, i])) for i, image in enumerate(more)]
    assert _refused(preprocessor, noisier) == len(noisier)
    clean_config, _ = orientation_for_site(GATE_ONLY, clean_site[0])
    assert config.noise_limit > 2 * clean_config.noise_limit  # what a fixed level would have refused


def test_a_site_of_mixed_scanners_keeps_its_noisiest_ordinary_films(clean_site, tmp_path) -> None:
    _, images = clean_site
    sds = np.linspace(0.003, 0.03, len(images))  # flat panels and old readers side by side: noise varies tenfold
    films = [noise(image, np.random.default_rng([4, i]), sd=sd) for i, (image, sd) in enumerate(zip(images, sds))]
    config, _ = orientation_for_site(GATE_ONLY, _write(tmp_path / "mixed", films))
    assert _refused(Preprocessor(config), films) == 0
    assert _refused(Preprocessor(config), [noise(image, np.random.default_rng(5), sd=0.08) for image in images]) \
        == len(images)


def test_a_noisy_site_decoding_for_a_model_of_a_clean_site_keeps_its_films(tmp_path, clean_site) -> None:
    """A federation's site, finetune: `load_site` (and the pool) measure the gate against the site's own films."""
    clean_limit = orientation_for_site(GATE_ONLY, clean_site[0])[0].noise_limit
    recorded = replace(GATE_ONLY, noise_limit=clean_limit)  # a model pretrained on the clean site records this
    noisy = SiteDataConfig(root=generate_site("rural_cr", 24, tmp_path / "rural", seed=7, image_size=SIDE))
    site = load_site(noisy, 32, None, seed=0, preprocess=recorded)
    assert site.summary()["n_skipped_decode"] == 0
    assert len(DecodedPool(noisy, 32, recorded).skipped) == 0
    film = read_image(load_manifest(noisy).records[0].path)
    assert Preprocessor(recorded)(film).refused is not None  # the recorded limit alone would refuse them


def test_the_reference_is_cached_by_the_images_and_replaces_a_recorded_limit(clean_site, monkeypatch,
                                                                             tmp_path) -> None:
    paths, images = clean_site
    first, _ = orientation_for_site(GATE_ONLY, paths)
    recorded = replace(GATE_ONLY, noise_limit=0.5)  # a model's recorded settings: the folder it was trained on
    few, report = orientation_for_site(recorded, paths[:MIN_REFERENCE_IMAGES - 1])
    assert few.noise_limit == 0.5 and "the model's recorded limit" in describe_check(report)  # too few: it stays
    monkeypatch.setattr(noise_module, "noise_sd", lambda image: pytest.fail("measured again"))
    again, _ = orientation_for_site(GATE_ONLY, paths)
    assert again == first
    assert orientation_for_site(recorded, paths)[0].noise_limit == first.noise_limit  # the site's own replaces it
    changed = _write(tmp_path / "changed", [noise(images[0], np.random.default_rng(9)), *images[1:]])
    with pytest.raises(pytest.fail.Exception, match="measured again"):
        orientation_for_site(GATE_ONLY, changed)


def test_an_unreadable_file_is_skipped_by_the_reference(clean_site, tmp_path, caplog) -> None:
    paths, images = clean_site
    folder = _write(tmp_path / "site", images)
    (tmp_path / "site" / "zz_broken.png").write_bytes(b"not a png")
    _, report = orientation_for_site(GATE_ONLY, [*folder, tmp_path / "site" / "zz_broken.png"])
    assert report["noise"]["n_images"] == len(images) and "noise reference: skipped" in caplog.text
    assert report["noise"] == orientation_for_site(GATE_ONLY, paths)[1]["noise"]


def test_a_model_records_its_training_folders_limit_and_applies_it_to_single_images(region_models) -> None:
    """`server pretrain --preprocess` measures the limit on its folder; predict applies the recorded one."""
    metadata = load_checkpoint(region_models.carpal).metadata
    paths = image_paths(region_models.site)
    expected = site_noise_limit(paths, PreprocessConfig().noise_margin)["limit"]
    assert metadata["preprocess"]["noise_limit"] == pytest.approx(expected) and expected > 0
    preprocessor = preprocessor_for(metadata)  # what predict builds from the checkpoint, no folder in sight
    film = read_image(paths[0])
    assert refusal_reason(preprocessor(noise(film, np.random.default_rng(0))).refused or "") == REFUSED
    assert "noisier" not in (preprocessor(film).refused or "")


def test_no_reference_means_no_gate_and_the_gate_can_be_switched_off(clean_site) -> None:
    paths, images = clean_site
    noisy = noise(images[0], np.random.default_rng(0))
    few, report = orientation_for_site(GATE_ONLY, paths[:MIN_REFERENCE_IMAGES - 1])
    assert few.noise_limit == 0.0 and "noise gate off" in describe_check(report)
    assert Preprocessor(few)(noisy).refused is None
    assert Preprocessor(GATE_ONLY)(noisy).refused is None  # settings never resolved on a folder: no reference
    off, report = orientation_for_site(replace(GATE_ONLY, noise_gate=False), paths)
    assert off.noise_limit == 0.0 and "noise" not in report
    assert Preprocessor(replace(off, noise_limit=0.01))(noisy).refused is None  # a limit is ignored when off


def test_the_gate_is_on_by_default_and_its_settings_are_checked() -> None:
    assert PreprocessConfig().noise_gate and PreprocessConfig().noise_margin == 1.25
    assert PreprocessConfig.parse("default,noise_gate=false").noise_gate is False
    for bad in ({"noise_margin": 0.9}, {"noise_limit": -0.1}):
        with pytest.raises(ConfigError, match="noise_margin must be >= 1"):
            PreprocessConfig(**bad)
