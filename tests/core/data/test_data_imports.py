"""core.data stays usable alone: importing it pulls in no Flower."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_core_data_does_not_import_flower() -> None:
    code = "import sys, core.data; sys.exit('flwr' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
