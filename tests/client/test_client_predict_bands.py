"""`predict` and `calibrate` with an interval per predicted-age band: the band's width, the flag at a compressed end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from predict_helpers import radiograph, tiny_checkpoint

from client import calibrate_command
from client.__main__ import main
from core.checkpoint import load_checkpoint, save_checkpoint
from core.intervals.conformal import ConformalInterval, conformal_quantile, coverage_by_band
from core.intervals.conformal_bands import AgeBand, fit_bands
from tests.core.data.data_sites import write_image


def predict(capsys: pytest.CaptureFixture, model: Path, *args: object) -> dict:
    assert main(["predict", "--model", str(model), "--json", "--no-progress", "--sex", "M", *map(str, args)]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    return row


def with_bands(model: Path, out: Path, bands: tuple[AgeBand, ...]) -> Path:
    loaded = load_checkpoint(model)
    interval = ConformalInterval(0.9, 20.0, 31.0, 500, "val", "made up", bands=bands)
    return save_checkpoint(out, loaded.model, dict(loaded.metadata, conformal=interval.to_dict()))


def three_bands(cut1: float, cut2: float, bias: tuple[float, float, float]) -> tuple[AgeBand, ...]:
    return (AgeBand(0.0, cut1, 100, 9.0, 12.0, bias[0]), AgeBand(cut1, cut2, 100, 5.0, 6.0, bias[1]),
            AgeBand(cut2, 228.0, 100, 14.0, 17.0, bias[2]))


def test_a_reading_gets_its_bands_interval_and_a_compressed_end_is_flagged(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    base = tiny_checkpoint(tmp_path / "model.pt")
    image = write_image(tmp_path / "x.png", radiograph(5), "png8")
    months = predict(capsys, base, image)["bone_age_months"]
    top = predict(capsys, with_bands(base, tmp_path / "top.pt", three_bands(months - 2, months - 1, (-3, 0, 20))), image)
    assert top["interval_high_months"] - top["interval_low_months"] == pytest.approx(28.0, abs=0.2)
    assert top["interval_band"] == f"{months - 1:.0f}-228 months"
    assert "high end of the model's range" in top["quality_flags"] and "20 months above" in top["quality_flags"]
    low = predict(capsys, with_bands(base, tmp_path / "low.pt", three_bands(months + 1, months + 2, (-20, 0, 3))),
                  image)
    assert low["interval_high_months"] - low["interval_low_months"] == pytest.approx(18.0, abs=0.2)
    assert "low end of the model's range" in low["quality_flags"]
    middle = predict(capsys, with_bands(base, tmp_path / "mid.pt", three_bands(months - 1, months + 1, (-20, 0, 20))),
                     image)
    assert middle["interval_high_months"] - middle["interval_low_months"] == pytest.approx(10.0, abs=0.2)
    assert middle["quality_flags"] is None  # no flag at all
    mild = predict(capsys, with_bands(base, tmp_path / "mild.pt", three_bands(months - 2, months - 1, (0, 0, 4))),
                   image)
    assert mild["quality_flags"] is None  # 4 months is under the 6-month threshold


def test_calibrate_prints_coverage_per_band_with_its_age_range(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    true = rng.uniform(0, 228, 900)
    predicted = 114 + 0.6 * (true - 114) + rng.normal(0, 8, 900)
    bands = fit_bands(predicted[:450], true[:450], predicted[:450], 0.9, 228.0, conformal_quantile)
    interval = ConformalInterval(0.9, 30.0, 30.0, 450, "val", "site", bands=bands)
    report = coverage_by_band(interval, predicted[450:], true[450:], False, 228.0)
    monkeypatch.setattr(calibrate_command, "calibrate_checkpoint",
                        lambda *args: (interval, {"sex given": report}))
    code = main(["calibrate", "--model", "m.pt", "--data", str(tmp_path), "--out", "o.pt"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    per_band = [line for line in out if line.strip().startswith("read ")]
    assert len(per_band) == len(bands) >= 3
    for line, band in zip(per_band, report.bands):
        assert band.band in line and f"covers {band.used.covered:.1%} of {band.used.n}" in line
        assert f"would cover {band.single.covered:.1%}" in line
    assert sum(band.label in line for band in bands for line in out if "+-" in line) == len(bands)
    main(["calibrate", "--model", "m.pt", "--data", str(tmp_path), "--out", "o.pt", "--json"])
    saved = json.loads(capsys.readouterr().out)
    assert len(saved["conformal"]["bands"]) == len(saved["test"]["sex given"]["bands"]) == len(bands)
