"""The ServerApp, or the whole SuperLink, killed after round 1 and the run restarted with `resume=true`, in Flower's
deployment engine on loopback (TLS, authenticated SuperNodes, a SuperLink keeping its state in `--database`): the
final model equals, array for array and bit for bit, that of the same run left alone.

Bit-identity holds because everything a round computes is fixed by the checkpoint and the round number: each site
seeds its local training from (seed, round), the server aggregates the sites in the order of their ids, and the
per-round checkpoint holds the model and the server optimiser's state (FedAvgM's momentum here), all on CPU.
One module-scoped federation (two sites, the smallest model and data that still train, validate and test, no site
evaluation) serves the uninterrupted reference run and both interrupted ones."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from deploy_federation import Federation, metric_rows, running_federation
from deploy_harness import REPO, kill_tree, named_in_tree, port_open, process_tree

from core.checkpoint import load_checkpoint

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process tracking reads /proc")

SITES = {"siteA": ("rsna", "months", 1), "siteB": ("tongji", "years", 2)}
ROUNDS = 2
# A reply later than this is left out of its round, which changes the model: far above a round on a loaded machine.
REPLY_TIMEOUT = 600.0
RUN_S = 600.0  # bound on one run on a loaded 2-core machine
# Server momentum: the checkpoint must carry the strategy's state too. The sites' evaluation and the final interval,
# which cannot change the model, are left out: each would add a ClientApp process per site and round (evaluation)
# or run (interval). tests/deploy/test_deploy_loopback.py runs both in this engine.
EXTRA = 'strategy = "fedavgm"\nfraction-evaluate = 0.0\ninterval = false\n'


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    with running_federation(tmp_path_factory.mktemp("resume"), SITES, database=True) as fed:
        yield fed


def _config(fed: Federation, out: str, resume: bool = False) -> Path:
    path = fed.run_config(out, rounds=ROUNDS, min_nodes=len(SITES), timeout=REPLY_TIMEOUT, resume=resume)
    path.write_text(path.read_text() + EXTRA)
    return path


def _run(fed: Federation, out: str, resume: bool = False) -> dict[str, torch.Tensor]:
    """Run (or resume) to the end with `flwr run --stream`; the final model's arrays."""
    name = f"{out}-{'resumed' if resume else 'run'}"
    result = fed.processes.run(name, fed.flwr_run(_config(fed, out, resume)), fed.root / "home-cli", RUN_S)
    final = fed.root / out / "federated_final.pt"
    assert result.returncode == 0 and final.exists(), f"{name} failed\n{fed.processes.tails()}"
    checkpoint = load_checkpoint(final)
    assert checkpoint.metadata["round"] == ROUNDS, fed.processes.tails()
    return checkpoint.model.state_dict()


@pytest.fixture(scope="module")
def uninterrupted(federation: Federation) -> dict[str, torch.Tensor]:
    started = time.monotonic()
    arrays = _run(federation, "whole")
    phases = {row["phase"] for row in metric_rows(federation.root / "whole" / "metrics.csv")}
    assert phases == {"train", "central"}, phases  # fraction-evaluate = 0: no site evaluates
    print(f"uninterrupted run: {time.monotonic() - started:.0f} s", file=sys.stderr)  # for docs/deployment.md
    return arrays


def _superlink(fed: Federation) -> int:
    return fed.processes.started[fed.superlink_name].pid


def _start_and_wait_for_round_one(fed: Federation, out: str) -> Path:
    """Submit the run (`flwr run` without --stream returns once the SuperLink has it); its round-1 checkpoint."""
    fed.flwr(f"{out}-submit", "run", str(REPO), "ossifl", "--run-config", str(_config(fed, out)))
    latest = fed.root / out / "federated_latest.pt"
    fed.processes.wait_until(latest.exists, RUN_S, f"{out}'s round-1 checkpoint")
    return latest


def _resume_and_compare(fed: Federation, out: str, uninterrupted: dict[str, torch.Tensor]) -> None:
    """Resume `out` to the end; its final model must be the uninterrupted run's, and metrics.csv count both rounds."""
    resumed = _run(fed, out, resume=True)
    trained = {row["round"] for row in metric_rows(fed.root / out / "metrics.csv") if row["phase"] == "train"}
    assert trained == {"1", "2"}, trained
    assert list(resumed) == list(uninterrupted)
    different = [key for key, value in resumed.items() if not torch.equal(value, uninterrupted[key])]
    assert not different, f"{len(different)} arrays differ from the uninterrupted run's, first {different[:3]}"


def test_a_serverapp_killed_after_round_one_resumes_to_the_uninterrupted_model(
        federation: Federation, uninterrupted: dict[str, torch.Tensor]) -> None:
    started = time.monotonic()
    latest = _start_and_wait_for_round_one(federation, "cut-serverapp")
    serverapps = named_in_tree(_superlink(federation), "flwr-serverapp")
    assert len(serverapps) == 1, serverapps
    kill_tree(serverapps[0])
    assert load_checkpoint(latest).metadata["round"] == 1
    assert not (latest.parent / "federated_final.pt").exists()
    _resume_and_compare(federation, "cut-serverapp", uninterrupted)
    print(f"serverapp killed and resumed: {time.monotonic() - started:.0f} s", file=sys.stderr)


def test_a_superlink_killed_after_round_one_restarts_from_its_database_and_resumes_to_the_uninterrupted_model(
        federation: Federation, uninterrupted: dict[str, torch.Tensor]) -> None:
    started = time.monotonic()
    latest = _start_and_wait_for_round_one(federation, "cut-superlink")
    superlink = _superlink(federation)
    kill_tree(superlink)  # the SuperLink, its SuperExec and the run's ServerApp
    federation.processes.wait_until(lambda: not process_tree(superlink) and not port_open(federation.port), 60,
                                    "the SuperLink to die")
    assert load_checkpoint(latest).metadata["round"] == 1
    federation.start_superlink("superlink-restarted")  # same port, certificates and database; the sites reconnect
    _resume_and_compare(federation, "cut-superlink", uninterrupted)
    # The SuperNodes reconnected by themselves: the processes started with the federation served the resumed run.
    # (Their logs say "Connection successful after" only when a poll failed first, which a site need not see.)
    for name in SITES:
        assert federation.processes.started[name].poll() is None, federation.processes.tails()
    print(f"superlink killed and resumed: {time.monotonic() - started:.0f} s", file=sys.stderr)
