"""`core` is plain PyTorch: no module under it imports Flower, directly or through another module."""

from __future__ import annotations

import ast
import re
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


def test_the_shared_test_setup_imports_no_simulation_or_flower() -> None:
    code = ("import sys, importlib.util; spec = importlib.util.spec_from_file_location('c', 'tests/conftest.py'); "
            "m = importlib.util.module_from_spec(spec); sys.modules['c'] = m; "
            "spec.loader.exec_module(m); "
            "print(sorted(n for n in sys.modules if n.split('.')[0] in ('sim', 'flwr')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_the_readme_layout_names_every_package_and_every_top_level_core_module() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    layout = readme[readme.index("## Layout"):readme.index("## TJ-Net as built here")]
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} | {"bench", "tests"}
    assert {name for name in packages if f"| `{name}/` |" not in layout} == set()
    modules = {p.name for p in (ROOT / "core").glob("*.py") if p.name != "__init__.py"}
    modules |= {f"{p.parent.name}/" for p in (ROOT / "core").glob("*/__init__.py")}
    assert {name for name in modules if f"`{name}`" not in layout} == set()


def test_the_readme_core_table_matches_the_tree_both_ways() -> None:
    """Each subpackage row that lists its modules (`stats/`: `metrics.py`, ...) lists exactly the modules in that
    folder, and each top-level module the table names exists: a module added, moved or removed fails here."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("`core/` by concern"):readme.index("## TJ-Net as built here")]
    rows = [line.split("|")[2] for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    listed = 0
    for cell in rows:
        names = set(re.findall(r"`(\w+\.py)`", cell))
        package = re.match(r"\s*`(\w+)/`:", cell)
        if package:
            folder = ROOT / "core" / package.group(1)
            assert names == {p.name for p in folder.glob("*.py") if p.name != "__init__.py"}, package.group(1)
            listed += 1
        else:
            assert {name for name in names if not (ROOT / "core" / name).exists()} == set(), cell
    assert listed == 5  # stats, predict, train, intervals, stages
