"""Modules depend on each other in one direction: no import cycle between modules, nor between core's subpackages.

Read from the source (no import runs): a module's own imports are those of its body, `if TYPE_CHECKING:` blocks
included (a cycle in type hints is still a cycle for the reader); imports inside functions are deferred and count
only between subpackages (core.data must not reach into core.preprocess even lazily, since core.preprocess reads
its images through core.data).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("core", "client", "server", "sim", "strategies", "deploy")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            found[".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")] = path
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imports(nodes: list[ast.stmt], modules: dict[str, Path], deep: bool) -> set[str]:
    """The project modules `nodes` import (with `deep`, also inside functions and classes)."""
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {m for a in node.names if (m := _resolve(a.name, modules))}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:  # `from core.data import views` imports the module core.data.views
                full = f"{node.module}.{alias.name}"
                if (target := full if full in modules else _resolve(node.module, modules)):
                    found.add(target)
        elif isinstance(node, (ast.If, ast.Try)) or (deep and hasattr(node, "body")):
            children = [n for field in ("body", "orelse", "finalbody", "handlers") for n in getattr(node, field, [])]
            found |= _imports([c for c in children if isinstance(c, ast.stmt)] +
                              [s for h in children if isinstance(h, ast.ExceptHandler) for s in h.body], modules, deep)
    return found


def _graph(deep: bool) -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(ast.parse(path.read_text(encoding="utf-8")).body, modules, deep) - {name}
            for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while (top := stack.pop()) != node:
                component.append(top)
            if component:
                found.append(sorted([node, *component]))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_two_modules_import_each_other() -> None:
    graph = _graph(deep=False)
    assert "core.data.views" in graph["core.data.pool"] or "core.data.site" in graph["core.data.views"]  # it reads
    assert _cycles(graph) == []


def test_no_two_of_cores_subpackages_import_each_other_even_lazily() -> None:
    def unit(module: str) -> str:  # core.data.site -> core.data; core.stages.central -> core.stages.central; sim.run -> sim
        return ".".join(module.split(".")[:2]) if module.startswith("core.") else module.split(".")[0]

    units: dict[str, set[str]] = {}
    for module, targets in _graph(deep=True).items():
        units.setdefault(unit(module), set()).update(unit(t) for t in targets if unit(t) != unit(module))
    assert "core.data" in units["core.preprocess"]  # the preprocessing reads its images through core.data
    assert _cycles(units) == []
