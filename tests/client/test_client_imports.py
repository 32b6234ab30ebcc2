"""A ClientApp process starts light: a deployed SuperNode starts one per message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_client_app_imports_opacus_only_when_a_site_trains_privately() -> None:
    code = "import sys, client.app; sys.exit('opacus' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
