"""A whole federation without Flower's engine: a grid that answers each message in-process (every site returns
what it was sent plus one), so the rounds, the final checkpoint, a resume and a failed run are checked in seconds.

`tests/server/test_server_federation.py` runs real sites in the engine (minutes); these tests pin what the server
itself does with their replies.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

import server.federation as federation_module
from core.checkpoint import describe, file_sha256, load_checkpoint, save_checkpoint
from core.errors import ResumeMismatch
from core.model.config import TJNetConfig
from core.model.tjnet import TJNet
from core.preprocess import PreprocessConfig
from core.round_settings import RoundSettings
from server.config import FederationConfig
from server.federation import FINAL, LATEST, run_federation
from sites_grid import SitesGrid  # tests/server/sites_grid.py


pytestmark = pytest.mark.usefixtures("flower_identity")  # Messages built outside a Flower process


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = TJNet(TJNetConfig(image_size=32, width=0.25))
    return save_checkpoint(tmp_path_factory.mktemp("loop") / "pretrained.pt", model, describe(model))


def _config(pretrained: Path, out: Path, rounds: int = 2, **extra) -> FederationConfig:
    return FederationConfig(pretrained=pretrained, settings=RoundSettings(num_rounds=rounds, seed=3), out_dir=out,
                            device="cpu", interval=False, **extra)


def test_a_run_sends_its_settings_merges_every_round_and_writes_what_it_applied(pretrained: Path, tmp_path: Path,
                                                                               caplog) -> None:
    grid = SitesGrid()
    with caplog.at_level(logging.INFO, logger="ossifl.server"):
        outcome = run_federation(grid, _config(pretrained, tmp_path))
    final = load_checkpoint(tmp_path / FINAL)
    before = load_checkpoint(pretrained).model.state_dict()
    after = final.model.state_dict()
    assert outcome.final_checkpoint == tmp_path / FINAL and outcome.failure == "" and outcome.rounds_done == 2
    assert outcome.shared_keys and all(k.startswith(("block4", "block5", "block6")) for k in outcome.shared_keys)
    for key, value in after.items():  # the shared arrays moved by one per round, the frozen blocks not at all
        moved = 2 if key in outcome.shared_keys else 0
        torch.testing.assert_close(value, before[key] + moved, msg=key)
    assert outcome.bytes_per_site_per_round == sum(after[k].numel() * after[k].element_size()
                                                   for k in outcome.shared_keys)
    assert [r.round for r in outcome.rounds] == [1, 2] and outcome.central_epsilon is None
    assert all(0 < r.central["round-seconds"] < 600 for r in outcome.rounds)  # every round timed, round 1 included
    assert grid.rounds("train") == [1, 1, 2, 2] and grid.rounds("evaluate") == [1, 1, 2, 2]
    config = grid.sent[0][1]
    assert config["pretrained-sha256"] == file_sha256(pretrained) and config["freeze"] == "1-3"
    assert config["seed"] == 3 and config["num-rounds"] == 2
    assert {config["federation-id"] for _, config in grid.sent} == {final.metadata["federation_id"]}
    meta = final.metadata
    assert (meta["round"], meta["strategy"], meta["seed"], meta["pretrained"]) == (2, "fedavg", 3, str(pretrained))
    assert meta["pretrained_sha256"] == file_sha256(pretrained) and meta["run_config"] == outcome.settings
    assert outcome.settings["strategy"] == "fedavg" and outcome.settings["freeze"] == "1-3"
    latest = load_checkpoint(tmp_path / LATEST)
    assert latest.metadata["round"] == 2 and latest.metadata["strategy_state"] is not None
    assert (latest.metadata["seed"], latest.metadata["strategy"]) == (3, "fedavg")
    assert latest.metadata["run_config"] == outcome.settings and latest.metadata["federation_id"] == meta["federation_id"]
    assert "central_dp_state" not in latest.metadata and "central_epsilon" not in meta
    assert (f"federation done: 2 rounds, {len(outcome.shared_keys)} arrays "
            f"({outcome.bytes_per_site_per_round / 1024:.1f} kB) per site and round, final model {tmp_path / FINAL}"
            ) in [r.getMessage() for r in caplog.records]


def test_a_resumed_run_trains_only_the_rounds_left_and_keeps_its_id(pretrained: Path, tmp_path: Path,
                                                                      caplog) -> None:
    first = SitesGrid()
    run_federation(first, _config(pretrained, tmp_path, rounds=1))
    federation_id = load_checkpoint(tmp_path / LATEST).metadata["federation_id"]
    resumed = SitesGrid()
    with caplog.at_level(logging.INFO, logger="ossifl.server"):
        outcome = run_federation(resumed, _config(pretrained, tmp_path, rounds=3, resume=True))
    assert f"resuming after round 1 from {tmp_path / LATEST}" in [r.getMessage() for r in caplog.records]
    assert resumed.rounds("train") == [2, 2, 3, 3] and outcome.rounds_done == 3
    assert [r.round for r in outcome.rounds] == [2, 3]  # the rounds this process ran
    assert {config["federation-id"] for _, config in resumed.sent} == {federation_id}
    final = load_checkpoint(tmp_path / FINAL)
    assert final.metadata["round"] == 3 and final.metadata["federation_id"] == federation_id
    before = load_checkpoint(pretrained).model.state_dict()
    for key in outcome.shared_keys:
        torch.testing.assert_close(final.model.state_dict()[key], before[key] + 3, msg=key)
    done = SitesGrid()  # nothing left to train: the final model is written again, no message sent
    assert run_federation(done, _config(pretrained, tmp_path, rounds=3, resume=True)).rounds_done == 3
    assert done.sent == []
    with pytest.raises(ResumeMismatch, match=r"cannot resume .* under a different run config \(local-epochs: 1 -> 2; "
                                             r"lr: 0.0003 -> 0.5\); start a new out-dir or resume with the original "
                                             r"settings$"):
        run_federation(SitesGrid(), FederationConfig(
            pretrained=pretrained, settings=RoundSettings(num_rounds=4, seed=3, lr=0.5, local_epochs=2),
            out_dir=tmp_path, device="cpu", interval=False, resume=True))
    fresh = SitesGrid()  # without resume the run starts again from the pretrained model
    assert run_federation(fresh, _config(pretrained, tmp_path, rounds=1)).rounds_done == 1
    assert fresh.rounds("train") == [1, 1]


def test_a_run_in_which_no_site_trains_stops_without_a_final_model(pretrained: Path, tmp_path: Path,
                                                                   caplog) -> None:
    with caplog.at_level(logging.ERROR, logger="ossifl.server"):
        outcome = run_federation(SitesGrid(fail_from=1), _config(pretrained, tmp_path / "none"))
    assert outcome.final_checkpoint is None and outcome.rounds_done == 0 and outcome.bytes_per_site_per_round == 0
    assert outcome.failure.startswith("train round 1: no site trained (")  # the strategy's reason, then the outcome
    assert outcome.failure.endswith("; the run stops without a final model (no round was merged)")
    assert not (tmp_path / "none" / FINAL).exists()
    assert f"federation failed: {outcome.failure}" in [r.getMessage() for r in caplog.records]
    assert outcome.shared_keys and all(k.startswith(("block4", "block5", "block6")) for k in outcome.shared_keys)
    later = run_federation(SitesGrid(fail_from=2), _config(pretrained, tmp_path / "later", rounds=3))
    assert later.final_checkpoint is None and later.rounds_done == 1 and [r.round for r in later.rounds] == [1, 2]
    assert later.failure.endswith(f"the run stops without a final model ({LATEST} holds round 1)")
    assert load_checkpoint(tmp_path / "later" / LATEST).metadata["round"] == 1
    assert later.settings == load_checkpoint(tmp_path / "later" / LATEST).metadata["run_config"]


def test_the_server_evaluates_its_central_set_before_and_after_every_round(pretrained: Path, tmp_path: Path,
                                                                           caplog, monkeypatch) -> None:
    from sim.phantom.writer import generate_site

    central = generate_site("rsna", 40, tmp_path / "central", seed=5, image_size=32)
    units, loads = [], []  # the unit of the central set's labels reaches its evaluation
    evaluate, load = federation_module.evaluate_model, federation_module.load_site
    monkeypatch.setattr(federation_module, "evaluate_model", lambda *a: units.append(a[3]) or evaluate(*a))
    monkeypatch.setattr(federation_module, "load_site",  # (not run here: the phantom is not preprocessed)
                        lambda *a, **kw: loads.append(kw) or load(*a, **{**kw, "preprocess": None}))
    model = load_checkpoint(pretrained).model  # preprocessed like the images it was trained on
    preprocessed = save_checkpoint(tmp_path / "pre.pt", model,
                                   describe(model, preprocess=PreprocessConfig(canonical=False).to_dict()))
    merged, merge = [], federation_module.Federation.merge  # what Flower gets back: the central metrics
    monkeypatch.setattr(federation_module.Federation, "merge", lambda *a: merged.append(merge(*a)) or merged[-1])
    with caplog.at_level(logging.INFO, logger="ossifl.server"):
        outcome = run_federation(SitesGrid(), _config(preprocessed, tmp_path / "run", central_data=central))
    assert units == ["months"] * 3 and [kw["preprocess"] for kw in loads] == [PreprocessConfig(canonical=False)]
    assert [r.round for r in outcome.rounds] == [0, 1, 2]
    mads = [r.central["mad_months"] for r in outcome.rounds]
    assert all(np.isfinite(mads)) and mads[0] != mads[1]  # round 0: the pretrained model; then the merged one
    assert [record["mad_months"] for record in merged] == pytest.approx(mads)
    assert all(r.central["n"] > 0 for r in outcome.rounds) and "round 2: central MAD" in caplog.text
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert sum(",central,server,ok,,mad_months," in row for row in rows) == 3
    assert f"round 2: central MAD {mads[2]:.2f} months" in [r.getMessage() for r in caplog.records]
    done = run_federation(SitesGrid(), _config(preprocessed, tmp_path / "run", central_data=central, resume=True))
    assert done.rounds_done == 2 and done.rounds == []  # nothing left: not even the central set is evaluated again


def test_the_interval_is_fitted_after_the_last_round_on_the_final_arrays(pretrained: Path, tmp_path: Path,
                                                                         monkeypatch) -> None:
    calls = []

    def fitted(grid, arrays, config, timeout):
        calls.append((grid, {k: a.numpy().copy() for k, a in arrays.items()}, dict(config), timeout))
        return {"conformal_months": 7.5}

    monkeypatch.setattr(federation_module, "federated_interval", fitted)
    grid = SitesGrid()
    config = FederationConfig(pretrained=pretrained, settings=RoundSettings(num_rounds=2), out_dir=tmp_path,
                              device="cpu", timeout=12.0)
    outcome = run_federation(grid, config)
    (used, arrays, sent, timeout), = calls
    final = load_checkpoint(tmp_path / FINAL)
    assert used is grid and timeout == 12.0 and sent["server-round"] == 2
    assert sent["federation-id"] == final.metadata["federation_id"]
    assert list(arrays) == outcome.shared_keys
    assert all(np.array_equal(arrays[k], final.model.state_dict()[k].numpy()) for k in arrays)
    assert final.metadata["conformal_months"] == 7.5
    calls.clear()
    run_federation(SitesGrid(fail_from=1), FederationConfig(pretrained=pretrained, out_dir=tmp_path / "f",
                                                            settings=RoundSettings(num_rounds=1), device="cpu"))
    assert calls == []  # no model, no interval


def test_a_resume_restores_the_strategys_state(pretrained: Path, tmp_path: Path) -> None:
    """FedAvgM's momentum carries over a resume: two rounds in one go and one plus one resumed give one model."""
    def config(out: Path, rounds: int, resume: bool = False) -> FederationConfig:
        return _config(pretrained, out, rounds=rounds, resume=resume, strategy="fedavgm",
                       strategy_options={"server-momentum": 0.5})

    run_federation(SitesGrid(), config(tmp_path / "straight", 2))
    run_federation(SitesGrid(), config(tmp_path / "resumed", 1))
    run_federation(SitesGrid(), config(tmp_path / "resumed", 2, resume=True))
    straight, resumed = (load_checkpoint(tmp_path / name / FINAL).model.state_dict() for name in ("straight", "resumed"))
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    fresh = load_checkpoint(pretrained).model.state_dict()
    assert any(not torch.equal(straight[k], fresh[k] + 2) for k in straight if k.startswith("block6"))  # momentum


def test_interval_from_refits_the_interval_of_a_federated_model_and_trains_no_round(pretrained: Path, tmp_path: Path,
                                                                                    monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(federation_module, "refit_interval", lambda *args: calls.append(args) or "refitted")
    config = _config(pretrained, tmp_path, interval_from=pretrained)
    grid = SitesGrid()
    assert run_federation(grid, config) == "refitted" and calls == [(grid, config, FINAL)] and grid.sent == []


def test_the_central_set_is_read_in_the_label_unit_it_was_given(pretrained: Path, tmp_path: Path,
                                                                  monkeypatch) -> None:
    """A central set labelled in whole years must not be read as months (the unit reaches the loader)."""
    seen = []
    monkeypatch.setattr(federation_module, "load_site", lambda data, *a, **kw: seen.append(data) or
                        type("Loaded", (), {"test": "central test split"})())
    config = _config(pretrained, tmp_path, central_data=tmp_path / "central", central_label_unit="years")
    assert federation_module._central_set(config, 32, None) == "central test split"
    assert [(d.root, d.label_unit) for d in seen] == [(tmp_path / "central", "years")]
