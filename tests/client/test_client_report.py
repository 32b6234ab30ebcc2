"""`predict --report`: a self-contained page per patient, rendered in headless Chromium when it is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from predict_helpers import tiny_checkpoint

from client.__main__ import main
from client.report_html import NO_SDS, REVIEW_STATEMENT
from sim.phantom.writer import generate_site

CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(name)), None)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("report")
    site = generate_site("rsna", 2, root / "site", seed=4, image_size=256)
    model = tiny_checkpoint(root / "model.pt")
    image = sorted((site / "images").iterdir())[0]
    code = main(["predict", "--model", str(model), "--sex", "F", "--chronological-age", "8", "--out",
                 str(root / "out"), "--report", "--no-progress", str(image)])
    assert code == 0
    (page,) = (root / "out" / "reports").iterdir()
    return page


def test_report_holds_everything_and_needs_no_other_file(report: Path) -> None:
    text = report.read_text()
    for needed in (REVIEW_STATEMENT, NO_SDS, "Bone age", "Prediction interval", "90% prediction interval",
                   "BA - CA", "8 y 0 m", "command line", "Quality flags", "SHA-256", "How it was trained",
                   "interval calibrated on", "what the model saw: 48 x 48 px", "shown at 384 px",
                   "3 x 3 cells of block 4", "Preprocessing", "none: the model reads the image as stored"):
        assert needed in text, needed
    sources = re.findall(r'src="([^"]*)"', text)
    assert len(sources) == 3 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http://" not in text and "https://" not in text and "<script" not in text


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian package: chromium)")
def test_report_renders_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    shot = tmp_path / "shot.png"
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,1300", f"--screenshot={shot}",
               report.as_uri()]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape[:2] == (1300, 1000)
    colours = len(np.unique(pixels.reshape(-1, 3), axis=0))
    assert colours > 500  # text alone gives a few dozen grey levels; the radiograph and heat map give many more
    assert (pixels.sum(axis=2) < 700).mean() > 0.05  # not a blank white page
    red_box = (pixels[..., 0] > 150) & (pixels[..., 1] < 60) & (pixels[..., 2] < 60)
    assert red_box.sum() > 500  # the clinician-review box is drawn
