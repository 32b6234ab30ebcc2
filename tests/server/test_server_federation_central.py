"""Central DP through a whole federation without Flower's engine (`sites_grid.SitesGrid` answers in-process):
the wrapper actually runs the rounds, the accountant's state is in every per-round checkpoint, epsilon and delta
are in metrics.csv, the log and the final model, a resume continues the accounting, and the budget stops a run
cleanly. `tests/server/test_server_central_dp.py` runs the same in the engine (a minute); these take a second.
"""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from core.checkpoint import describe, load_checkpoint, save_checkpoint
from core.errors import ConfigError
from core.model.config import TJNetConfig
from core.model.tjnet import TJNet
from core.round_settings import RoundSettings
from server.config import FederationConfig
from server.federation import FINAL, LATEST, run_federation
from sites_grid import SitesGrid  # tests/server/sites_grid.py

pytest.importorskip("dp_accounting", reason="central DP accounting needs flwr[dp]")


pytestmark = pytest.mark.usefixtures("flower_identity")  # Messages built outside a Flower process


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = TJNet(TJNetConfig(image_size=32, width=0.25))  # GroupNorm: shippable under central DP
    return save_checkpoint(tmp_path_factory.mktemp("central") / "pretrained.pt", model, describe(model))


def _config(pretrained: Path, out: Path, rounds: int, resume: bool = False, **extra) -> FederationConfig:
    dp = {"central_dp_noise_multiplier": 1.0, "central_dp_clipping_norm": 0.5, "central_dp_delta": 1e-6, **extra}
    return FederationConfig(pretrained=pretrained, settings=RoundSettings(num_rounds=rounds, seed=1), out_dir=out,
                            device="cpu", interval=False, resume=resume, timeout=30.0, **dp)


def _epsilons(out: Path) -> list[tuple[int, float]]:
    with open(out / "metrics.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["metric"] == "central-epsilon"]
    return [(int(r["round"]), float(r["value"])) for r in rows]


def test_a_central_dp_run_clips_and_records_its_epsilon_every_round(pretrained: Path, tmp_path: Path,
                                                                    caplog) -> None:
    grid = SitesGrid()
    with caplog.at_level(logging.INFO, logger="ossifl.server"):
        outcome = run_federation(grid, _config(pretrained, tmp_path, rounds=2))
    assert grid.timeouts and set(grid.timeouts) == {30.0}
    (first_round, first), (second_round, second) = _epsilons(tmp_path)
    assert (first_round, second_round) == (1, 2) and 0 < first < second
    assert outcome.central_epsilon == pytest.approx(second) and outcome.rounds_done == 2
    latest = load_checkpoint(tmp_path / LATEST).metadata
    assert sum(c["count"] for c in latest["central_dp_state"]["compositions"]) == 2  # one release per round
    final = load_checkpoint(tmp_path / FINAL)
    assert final.metadata["central_epsilon"] == pytest.approx(second) and final.metadata["central_delta"] == 1e-6
    assert f", central epsilon {second:.3f}" in caplog.text
    # every site sent its arrays plus one (an unclipped mean moves each weight by 2 in two rounds): clipped to a norm
    # of 0.5 the mean barely moves them; the noise (std 1 x 0.5 / 2 sites per round) moves each one
    before = load_checkpoint(pretrained).model.state_dict()
    moved = torch.cat([(final.model.state_dict()[k] - before[k]).flatten() for k in outcome.shared_keys])
    assert abs(float(moved.mean())) < 0.05 and 0.2 < float(moved.std()) < 0.5


def test_a_resumed_central_dp_run_continues_the_accounting(pretrained: Path, tmp_path: Path) -> None:
    run_federation(SitesGrid(), _config(pretrained, tmp_path, rounds=1))
    (_, one_release), = _epsilons(tmp_path)
    outcome = run_federation(SitesGrid(), _config(pretrained, tmp_path, rounds=2, resume=True))
    assert outcome.rounds_done == 2 and outcome.central_epsilon > one_release  # two releases, not one
    state = load_checkpoint(tmp_path / LATEST).metadata["central_dp_state"]
    assert sum(c["count"] for c in state["compositions"]) == 2
    old = load_checkpoint(tmp_path / LATEST)  # as written before the accountant's state was kept
    save_checkpoint(tmp_path / LATEST, old.model,
                    {k: v for k, v in old.metadata.items() if k != "central_dp_state"})
    with pytest.raises(ConfigError, match=r"^cannot resume under central DP: .*federated_latest.pt has no accountant "
                                          r"state \(the rounds before it ran without central DP\)$"):
        run_federation(SitesGrid(), _config(pretrained, tmp_path, rounds=3, resume=True))


def test_the_budget_stops_a_central_dp_run_and_keeps_the_last_released_model(pretrained: Path, tmp_path: Path,
                                                                            caplog, monkeypatch) -> None:
    # sigma 1, 2 sites, delta 1e-6: about 5.2 after one release, 7.8 after two
    import server.federation as federation_module

    fitted = []  # the interval is fitted on the last released model, as of its round
    monkeypatch.setattr(federation_module, "federated_interval", lambda *args: fitted.append(dict(args[2])) or {})
    config = replace(_config(pretrained, tmp_path, rounds=3, central_dp_max_epsilon=6.5), interval=True)
    with caplog.at_level(logging.WARNING, logger="ossifl.server"):
        outcome = run_federation(SitesGrid(), config)
    assert [sent["server-round"] for sent in fitted] == [1]
    assert outcome.failure == "" and outcome.rounds_done == 1 and outcome.final_checkpoint == tmp_path / FINAL
    stop = r"^central DP budget reached after round 1: stopping; the model of round 1 is kept \(.*would exceed max_eps"
    assert any(re.match(stop, r.getMessage()) for r in caplog.records)  # with Flower's reason
    final, latest = (load_checkpoint(tmp_path / name) for name in (FINAL, LATEST))
    assert final.metadata["round"] == latest.metadata["round"] == 1
    assert all(torch.equal(v, latest.model.state_dict()[k]) for k, v in final.model.state_dict().items())
    assert [r for r, _ in _epsilons(tmp_path)] == [1] and outcome.central_epsilon <= 6.5


def test_a_budget_spent_before_the_first_round_fits_no_interval(pretrained: Path, tmp_path: Path, monkeypatch) -> None:
    import server.federation as federation_module

    fitted = []
    monkeypatch.setattr(federation_module, "federated_interval", lambda *args: fitted.append(args) or {})
    config = replace(_config(pretrained, tmp_path, rounds=2, central_dp_max_epsilon=1.0), interval=True)
    outcome = run_federation(SitesGrid(), config)  # one release would already cost about 5
    assert outcome.rounds_done == 0 and outcome.failure == "" and fitted == []  # no merged model: nothing to fit
