"""`core` is plain PyTorch: no module under it imports Flower, directly or through another module."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _core_modules() -> list[str]:
    return sorted(".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                  for p in (ROOT / "core").rglob("*.py"))


def test_no_core_source_file_names_flower() -> None:
    for path in (ROOT / "core").rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not {n for n in names if n.split(".")[0] in ("flwr", "client", "server", "strategies", "sim")}, path


def test_importing_every_core_module_loads_no_flower() -> None:
    modules = _core_modules()
    assert len(modules) > 20 and "core.round_settings" in modules and "core.model.groups" in modules
    code = ("import importlib, sys\n"
            f"for name in {modules!r}:\n"
            "    importlib.import_module(name)\n"
            "    if 'flwr' in sys.modules: sys.exit(name)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:] or result.stdout
