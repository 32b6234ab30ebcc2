"""Helpers of the in-process site tests: a copy of a phantom site with fewer images, a stubbed training round."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

import client.site as site_module
from core.stages.finetune import SiteRoundResult


def subset(site: tuple[Path, Path], ids: tuple[int, ...], out: Path, years: bool = False) -> Path:
    """A copy of the site with only these images, ages in years if asked (the fixture's files are never modified)."""
    (out / "images").mkdir(parents=True)
    with open(site[0] / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    kept = [{**row, "boneage": float(row["boneage"]) / 12} if years else row for row in rows if int(row["id"]) in ids]
    with open(out / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)
    for row in kept:
        shutil.copy(next((site[0] / "images").glob(f"{row['id']}.*")), out / "images")
    return out


def stub_training(monkeypatch: pytest.MonkeyPatch, result: SiteRoundResult) -> list[tuple]:
    """The site's training round replaced by one that records its arguments and returns `result`."""
    calls: list[tuple] = []

    def recorded(model, train_set, val_set, settings, device, round_number, *args, **kwargs):
        calls.append((len(train_set), len(val_set), settings, device, round_number, args, kwargs, model))
        return result

    monkeypatch.setattr(site_module, "train_site_round", recorded)
    return calls
