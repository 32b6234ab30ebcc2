"""`predict` and the noise gate: a folder's films are held to the folder's own noise reference, as the site paths do;
single files keep the limit the model recorded from its training folder (phantom sites only)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from client.__main__ import main
from core.checkpoint import describe, save_checkpoint
from core.model.config import TJNetConfig
from core.model.tjnet import TJNet
from core.preprocess import PreprocessConfig
from core.preprocess.noise import MIN_REFERENCE_IMAGES, site_noise_limit
from sim.phantom.profiles import PRESETS
from sim.phantom.synth import synthesize

NOISIER = "noisier than the site's films"


def _write(folder: Path, preset: str, n: int, seed: int) -> list[Path]:
    folder.mkdir(parents=True)
    profile = PRESETS[preset].with_image_size(128)
    paths = []
    for i in range(n):
        paths.append(folder / f"{preset}_{i:03d}.png")
        image = synthesize(profile, seed=seed, index=i).image
        Image.fromarray(np.rint(np.clip(image, 0, 1) * 65535).astype(np.uint16)).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A model whose recorded limit is a clean flat-panel site's (`tongji`), a noisy CR site's folder (`rural_cr`,
    every film well above that limit) and a folder too small for a reference of its own."""
    root = tmp_path_factory.mktemp("predict_noise")
    clean = _write(root / "clean", "tongji", MIN_REFERENCE_IMAGES, seed=5)
    noisy = _write(root / "inbox" / "rural", "rural_cr", MIN_REFERENCE_IMAGES + 2, seed=6)
    small = root / "inbox" / "small"
    small.mkdir()
    for path in noisy[:3]:
        (small / path.name).write_bytes(path.read_bytes())
    limit = site_noise_limit(clean, PreprocessConfig().noise_margin)["limit"]
    torch.manual_seed(0)
    model = TJNet(TJNetConfig(image_size=48, width=0.25))
    settings = PreprocessConfig(canonical=False, noise_limit=limit).resolved().to_dict()
    return save_checkpoint(root / "model.pt", model, describe(model, preprocess=settings)), noisy[0].parent, small


def _predict(capsys: pytest.CaptureFixture, model: Path, *inputs: Path) -> list[dict]:
    """The rows (the untrained model reads every film alike: 1, its warning, is as good as 0 here)."""
    assert main(["predict", "--model", str(model), "--sex", "F", "--json", "--no-progress",
                 *map(str, inputs)]) in (0, 1)
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_a_noisy_sites_folder_is_held_to_its_own_films_and_its_single_files_to_the_models_limit(
        sites: tuple[Path, Path, Path], capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture) -> None:
    model, folder, _ = sites
    with caplog.at_level(logging.INFO, logger="client.predict"):
        rows = _predict(capsys, model, folder)
    assert len(rows) == MIN_REFERENCE_IMAGES + 2 and all(row["status"] == "ok" for row in rows), rows[0]["reason"]
    assert f"noise gate for the films of {folder}" in caplog.text
    single = _predict(capsys, model, next(folder.iterdir()))
    assert single[0]["status"] == "refused" and NOISIER in single[0]["reason"]


def test_a_folder_too_small_for_a_reference_keeps_the_models_limit(sites: tuple[Path, Path, Path],
                                                                  capsys: pytest.CaptureFixture) -> None:
    model, _, small = sites
    rows = _predict(capsys, model, small)
    assert len(rows) == 3 and all(row["status"] == "refused" and NOISIER in row["reason"] for row in rows)
