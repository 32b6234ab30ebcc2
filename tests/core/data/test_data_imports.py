"""core.data stays usable alone: importing it pulls in no Flower, and no albumentations (0.5 CPU s a process, paid
only by a process that augments images: not by one that predicts or trains in feature space)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_core_data_and_site_finetuning_import_neither_flower_nor_albumentations() -> None:
    code = ("import sys, core.data; flower = 'flwr' in sys.modules; import core.stages.site_finetune; "
            "sys.exit(2 * flower + ('albumentations' in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
