"""The project's metadata can be resolved as Flower resolves it for `flwr run .`: Flower installs the app's
dependencies with `uv`, which refuses a `requires-python` that admits a Python some dependency does not."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
CANDIDATES = [Version(f"3.{minor}") for minor in range(6, 20)]


def _lowest(specifier: SpecifierSet) -> Version:
    return next(v for v in CANDIDATES if v in specifier)


def test_requires_python_admits_no_python_a_dependency_refuses() -> None:
    ours = SpecifierSet(PROJECT["requires-python"])
    for line in PROJECT["dependencies"]:
        name = Requirement(line).name
        try:
            theirs = metadata.metadata(name).get("Requires-Python")
        except metadata.PackageNotFoundError:
            pytest.fail(f"{name} is not installed")
        if theirs:  # upper bounds (flwr: < 4.0) are not held against the project by uv; lower ones are
            lower = SpecifierSet(",".join(s for s in theirs.split(",") if ">" in s))
            assert _lowest(ours) in lower, (
                f"requires-python {ours} admits Python {_lowest(ours)}, which {name} (Requires-Python {theirs}) "
                f"does not: `flwr run .` would fail to install the app's dependencies")


def test_readme_and_deployment_guide_state_the_same_minimum_python() -> None:
    minimum = _lowest(SpecifierSet(PROJECT["requires-python"]))
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    guide = (REPO / "docs" / "deployment.md").read_text(encoding="utf-8")
    assert re.search(rf"Python {minimum}\+", readme), "README quick start names another minimum Python"
    assert f"Python {minimum} or newer" in guide, "docs/deployment.md names another minimum Python"
