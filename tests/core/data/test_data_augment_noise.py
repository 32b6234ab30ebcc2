"""The noise augmentation of `AugmentConfig`: off by default, only noise when on, reproducible, bad values refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from data_sites import SiteBuilder

import server.pretrain_command
from core.data import AugmentConfig, BoneAgeDataset, DataError, SiteDataConfig, load_manifest
from core.data.dataset import NORM_STD
from server.cli import main

SIZE = 32
NOISY = AugmentConfig(noise_sd=(0.1, 0.1), noise_p=1.0)


def dataset(site: SiteBuilder, augment: AugmentConfig, seed: int = 0) -> BoneAgeDataset:
    return BoneAgeDataset(load_manifest(SiteDataConfig(site.root)).records[:12], SIZE, augment, seed=seed)


def items(data: BoneAgeDataset, epoch: int = 0) -> torch.Tensor:
    data.set_epoch(epoch)
    return torch.stack([data[i]["image"] for i in range(len(data))])


def test_noise_is_off_by_default_and_off_changes_nothing(png_site: SiteBuilder) -> None:
    assert not AugmentConfig().noise_on
    plain = items(dataset(png_site, AugmentConfig()))
    for off in (AugmentConfig(noise_sd=(0.05, 0.1), noise_p=0.0), AugmentConfig(noise_sd=(0.0, 0.0), noise_p=1.0)):
        assert not off.noise_on
        assert torch.equal(items(dataset(png_site, off)), plain)


def test_noise_on_adds_noise_of_the_given_sd_and_nothing_else(png_site: SiteBuilder) -> None:
    plain, noisy = items(dataset(png_site, AugmentConfig())), items(dataset(png_site, NOISY))
    difference = (noisy - plain) * NORM_STD  # in fractions of the full range
    inside = (plain * NORM_STD + 0.5 > 0.35) & (plain * NORM_STD + 0.5 < 0.65)  # grey pixels: never clipped
    assert inside.sum() > 500
    # the same crop, turn and exposure as without noise (noise comes last), plus noise of SD 0.1 (uint8 rounding)
    assert abs(difference[inside].mean().item()) < 0.01
    assert 0.09 < difference[inside].std().item() < 0.11
    assert (difference.flatten(1).abs().amax(1) > 0).all()  # every image, at noise_p 1


def test_noise_reaches_about_noise_p_of_the_images(png_site: SiteBuilder) -> None:
    half = AugmentConfig(noise_sd=(0.05, 0.1), noise_p=0.5)
    plain_set, noisy_set = dataset(png_site, AugmentConfig()), dataset(png_site, half)
    changed = [not torch.equal(items(plain_set, epoch)[i], items(noisy_set, epoch)[i])
               for epoch in range(4) for i in range(len(plain_set))]
    assert 0.25 < np.mean(changed) < 0.75


def test_noise_repeats_for_a_seed_and_changes_with_the_epoch(png_site: SiteBuilder) -> None:
    first = items(dataset(png_site, NOISY, seed=3))
    assert torch.equal(first, items(dataset(png_site, NOISY, seed=3)))
    assert not torch.equal(first, items(dataset(png_site, NOISY, seed=4)))
    assert not torch.equal(first, items(dataset(png_site, NOISY, seed=3), epoch=1))


@pytest.mark.parametrize("sd, p", [((0.2, 0.1), 0.5), ((-0.1, 0.1), 0.5), ((0.0, 0.9), 0.5), ((0.05, 0.1), 1.5)])
def test_bad_noise_settings_are_refused(sd: tuple[float, float], p: float) -> None:
    with pytest.raises(DataError, match="noise"):
        AugmentConfig(noise_sd=sd, noise_p=p)


def pretrain_job(tmp_path: Path, monkeypatch, *flags: str):
    jobs: list = []
    monkeypatch.setattr(server.pretrain_command, "pretrain", jobs.append)
    code = main(["pretrain", "--data", str(tmp_path), "--out", str(tmp_path / "m.pt"), *flags])
    return code, jobs


def test_server_pretrain_passes_the_noise_on(tmp_path: Path, monkeypatch) -> None:
    code, jobs = pretrain_job(tmp_path, monkeypatch, "--noise-sd", "0.02", "0.15", "--noise-p", "0.3")
    assert code == 0 and jobs[0].augment == AugmentConfig(noise_sd=(0.02, 0.15), noise_p=0.3)
    code, jobs = pretrain_job(tmp_path, monkeypatch, "--noise-sd", "0.02", "0.15")
    assert code == 0 and jobs[0].augment.noise_p == AugmentConfig.noise_p and jobs[0].augment.noise_on


@pytest.mark.parametrize("flags, message", [
    (("--noise-sd", "0.2", "0.1"), "noise SD range"),
    (("--noise-sd", "0.05", "0.1", "--noise-p", "2"), "noise probability"),
    (("--noise-sd", "0.05", "0.1", "--no-augment"), "without --no-augment"),
    (("--noise-p", "0.5",), "needs --noise-sd"),
])
def test_server_pretrain_refuses_bad_noise_flags_in_one_line(tmp_path: Path, monkeypatch, capsys, flags,
                                                             message: str) -> None:
    code, jobs = pretrain_job(tmp_path, monkeypatch, *flags)
    err = capsys.readouterr().err.strip()
    assert code == 2 and not jobs
    assert err.startswith("error: ") and message in err and "\n" not in err
