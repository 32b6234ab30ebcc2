"""Shared set-up of the tiny simulated federations: two phantom sites and an untrained TJ-Net, and one session of
Flower's simulation engine for the federations of every test module that asks for `engine_result`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from core.checkpoint import describe, save_checkpoint
from core.model.config import TJNetConfig
from core.model.tjnet import TJNet


@pytest.fixture
def flower_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower Messages built outside a Flower process (a test's in-process grid, ServerApp or ClientApp) read the run,
    node and task ids that process would set at start-up; a module asks for them with
    `pytestmark = pytest.mark.usefixtures("flower_identity")`."""
    from flwr.supercore.task_identity import TaskIdentity  # imported here: this module's set-up imports no Flower

    for attribute in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attribute, 1)


@pytest.fixture(autouse=True)
def _orientation_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Orientation models fitted on a folder's images (core.preprocess.site) go to a temporary cache, not ~/.cache."""
    monkeypatch.setenv("OSSIFL_CACHE", str(tmp_path_factory.mktemp("ossifl_cache")))


@dataclass(frozen=True)
class TinySites:
    """A pretrained checkpoint and two phantom site folders."""

    pretrained: Path
    sites: tuple[Path, ...]

    def nodes(self, state_root: Path, per_site: tuple[dict[str, Any], ...] = (), **extra: Any) -> tuple[dict, ...]:
        """The simulated sites' node configs (state under `state_root`; `per_site[i]` adds keys to site i)."""
        from sim.federation import site_node_config  # local: a test that needs no federation does not import Flower

        return tuple(site_node_config(path, index, state_root / path.name, self.pretrained, **extra,
                                      **(per_site[index] if index < len(per_site) else {}))
                     for index, path in enumerate(self.sites))


TinyFederation = Callable[[Path, int], TinySites]


@pytest.fixture(scope="session")
def tiny_federation() -> TinyFederation:
    """A function (root, n images per site) -> the pretrained checkpoint and the site folders."""

    def build(root: Path, n: int) -> TinySites:
        from sim.phantom.writer import generate_site

        sites = [generate_site(p, n, root / p, seed=i + 1, image_size=48) for i, p in enumerate(("rsna", "eu_clinic"))]
        torch.manual_seed(0)
        model = TJNet(TJNetConfig(image_size=48, width=0.25))
        pretrained = save_checkpoint(root / "pretrained.pt", model, describe(model))
        return TinySites(pretrained, tuple(sites))

    return build


@dataclass(frozen=True)
class RegionModels:
    """A phantom site and two TJ-Nets trained one epoch on it by `python -m server pretrain`: one on the carpal
    crop of the registered hand (no orientation model), one on the whole images (no preprocessing)."""

    site: Path
    carpal: Path
    whole: Path


@pytest.fixture(scope="session")
def region_models(tmp_path_factory: pytest.TempPathFactory) -> RegionModels:
    from server.cli import main  # local: only the tests that use the fixture import the server
    from sim.phantom.writer import generate_site

    root = tmp_path_factory.mktemp("regions")
    site = generate_site("rsna", 100, root / "site", seed=4, image_size=128)
    common = ["pretrain", "--data", str(site), "--epochs", "1", "--image-size", "32", "--width", "0.25", "--threads",
              "1", "--no-progress", "--seed", "0"]
    carpal, whole = root / "carpal.pt", root / "whole.pt"
    # the threshold mask finds no hand in the phantom's inverted films (the learned one does): some images are refused
    assert main([*common, "--out", str(carpal), "--preprocess", "default,canonical=false,mask=threshold", "--region",
                 "carpal"]) == 0
    assert main([*common, "--out", str(whole)]) == 0
    return RegionModels(site, carpal, whole)


@dataclass(frozen=True)
class EngineResult:
    """One test module's share of `engine_session`: its folder, its phantom sites and pretrained model, its runs
    (`sim.federation.SimulatedRun`) and their outcomes (`FederationOutcome`), in the same order."""

    root: Path
    tiny: TinySites
    runs: list[Any]
    outcomes: list[Any]


@pytest.fixture(scope="session")
def engine_session(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                   tiny_federation: TinyFederation) -> dict[str, EngineResult]:
    """The federations of every selected test module that uses `engine_result`, all in ONE session of Flower's
    simulation engine, so that its start-up (Ray, one actor per site importing torch, each site's first message:
    about a minute on a loaded 2-core machine, against 1-2 s per later round) is paid once, not once per module.

    Such a module defines `ENGINE_IMAGES` (images per phantom site) and `engine_runs(root, tiny)`, its runs on
    `tiny_federation(root, ENGINE_IMAGES)` in the order they must run (a run may read what an earlier run of its
    module wrote). Every run has the two sites of `tiny_federation`. Keyed by module name."""
    from sim.federation import run_federations  # local: a test that needs no federation does not import Flower

    modules = {item.module.__name__: item.module for item in request.session.items
               if "engine_result" in getattr(item, "fixturenames", ()) and getattr(item, "module", None)}
    planned: dict[str, tuple[Path, TinySites, list[Any]]] = {}
    for name, module in modules.items():
        root = tmp_path_factory.mktemp(name)
        tiny = tiny_federation(root, module.ENGINE_IMAGES)
        planned[name] = (root, tiny, list(module.engine_runs(root, tiny)))
    outcomes = iter(run_federations([run for _, _, runs in planned.values() for run in runs]))
    return {name: EngineResult(root, tiny, runs, [next(outcomes) for _ in runs])
            for name, (root, tiny, runs) in planned.items()}


@pytest.fixture(scope="module")
def engine_result(request: pytest.FixtureRequest, engine_session: dict[str, EngineResult]) -> EngineResult:
    """This module's runs and outcomes from `engine_session`."""
    return engine_session[request.module.__name__]
