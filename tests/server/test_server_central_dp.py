"""Central (client-level) DP: epsilon per round in metrics.csv, a clean stop at the budget, and the
refusals that keep Flower's accounting honest (uneven replies, BatchNorm, non-mean aggregation)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.server.superlink.linkstate.utils import create_message_error_unavailable_res_message
from flwr.supercore.task_identity import TaskIdentity

from core.checkpoint import load_checkpoint
from core.model.config import TJNetConfig
from core.model.groups import parameter_groups
from core.round_settings import RoundSettings
from core.model.tjnet import TJNet
from server.central_dp import AccountedFixedClipping, wrap_central_dp
from server.config import FederationConfig
from sim.federation import SimulatedRun
from strategies import build_strategy

pytest.importorskip("dp_accounting", reason="central DP accounting needs flwr[dp]")


ENGINE_IMAGES = 30


def engine_runs(root: Path, tiny) -> list[SimulatedRun]:
    """This module's federations on `tiny` (tests/conftest.py's TinySites), run in the suite's one engine session."""

    def run(name: str, rounds: int, max_epsilon: float) -> SimulatedRun:
        config = FederationConfig(pretrained=tiny.pretrained, out_dir=root / name, min_nodes=2, device="cpu",
                                  settings=RoundSettings(num_rounds=rounds, freeze=(1, 2, 3, 4), batch_size=8),
                                  central_dp_noise_multiplier=1.0, central_dp_clipping_norm=0.5,
                                  central_dp_max_epsilon=max_epsilon)
        return SimulatedRun(config, tiny.nodes(root / name / "state"))

    # sigma 1, 2 of 2 sites, delta 1e-5: epsilon 4.7 after one release, 7.1 after two
    return [run("accounted", 2, 0.0), run("budget", 3, 6.0)]


@pytest.fixture(scope="module")
def federation(engine_result):
    return engine_result.root, engine_result.tiny.pretrained


def _rows(path: Path, metric: str) -> list[dict]:
    with open(path, newline="") as handle:
        return [r for r in csv.DictReader(handle) if r["metric"] == metric]


def test_central_epsilon_is_recorded_every_round_and_grows(federation):
    root, _ = federation
    epsilon = _rows(root / "accounted" / "metrics.csv", "central-epsilon")
    assert [(r["round"], r["phase"], r["site"]) for r in epsilon] == [("1", "central", "server"),
                                                                      ("2", "central", "server")]
    first, second = (float(r["value"]) for r in epsilon)
    assert 0 < first < second
    examples = _rows(root / "accounted" / "metrics.csv", "num-examples")
    assert {float(r["value"]) for r in examples if r["phase"] == "train"} == {1.0}  # uniform weights, real counts kept
    latest = load_checkpoint(root / "accounted" / "federated_latest.pt").metadata
    state = json.loads(json.dumps(latest["central_dp_state"]))
    assert sum(c["count"] for c in state["compositions"]) == 2
    final = load_checkpoint(root / "accounted" / "federated_final.pt").metadata
    assert final["round"] == 2 and final["central_epsilon"] == pytest.approx(second)


def test_the_budget_stops_the_run_and_keeps_the_last_released_model(federation):
    root, pretrained = federation
    epsilon = [float(r["value"]) for r in _rows(root / "budget" / "metrics.csv", "central-epsilon")]
    assert len(epsilon) == 1 and epsilon[0] <= 6.0
    latest = load_checkpoint(root / "budget" / "federated_latest.pt")
    final = load_checkpoint(root / "budget" / "federated_final.pt")
    assert latest.metadata["round"] == 1 and final.metadata["round"] == 1
    assert final.metadata["central_epsilon"] == pytest.approx(epsilon[0])
    before = load_checkpoint(pretrained).model.state_dict()
    after = final.model.state_dict()
    for key, value in latest.model.state_dict().items():
        assert torch.equal(value, after[key]), key
    assert any(not torch.equal(before[k], after[k]) for k in before)


class FakeGrid:
    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = node_ids

    def get_node_ids(self) -> list[int]:
        return self.node_ids


def _reply(msg: Message, arrays: dict[str, np.ndarray], weight: float) -> Message:
    content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                          "metrics": MetricRecord({"num-examples": weight})})
    return Message(content, reply_to=msg)


def _config(tmp_path: Path, min_nodes: int = 2, **extra) -> FederationConfig:
    return FederationConfig(pretrained=tmp_path / "none.pt", min_nodes=min_nodes, central_dp_noise_multiplier=1.0,
                            **extra)


def test_uneven_rounds_release_nothing_and_the_accounting_resumes(tmp_path, monkeypatch):
    for attribute in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attribute, 1)
    global_arrays = {"block5.weight": np.zeros((2, 2), np.float32), "block6.weight": np.ones(3, np.float32)}
    model = torch.nn.Linear(1, 1)  # no BatchNorm, float arrays: only the per-round checks matter here
    wrapper = wrap_central_dp(build_strategy("fedavg", min_nodes=2), _config(tmp_path), model, [], None)
    assert isinstance(wrapper, AccountedFixedClipping)

    def round_(server_round: int, second: dict[str, np.ndarray], weight: float):
        sent = list(wrapper.configure_train(server_round, ArrayRecord({k: Array(v) for k, v in global_arrays.items()}),
                                            ConfigRecord(), FakeGrid([1, 2])))
        trained = {k: v + 0.1 for k, v in global_arrays.items()}  # Flower cannot clip an all-zero update
        replies = [_reply(sent[0], trained, 1.0), _reply(sent[1], second, weight)]
        return wrapper.aggregate_train(server_round, replies)

    assert round_(1, {"block6.weight": np.ones(3, np.float32)}, 1.0) == (None, None)  # deeper freeze
    assert round_(2, {k: v - 0.1 for k, v in global_arrays.items()}, 40.0) == (None, None)  # a real count, not 1
    assert wrapper.accountant.num_releases == 0 and wrapper.epsilon() == 0.0
    arrays, _ = round_(3, {k: v - 0.1 for k, v in global_arrays.items()}, 1.0)
    assert arrays is not None and list(arrays.keys()) == list(global_arrays)
    assert wrapper.accountant.num_releases == 1 and wrapper.epsilon() > 0
    state = json.loads(json.dumps(wrapper.accountant_state()))  # as stored in the checkpoint
    resumed = wrap_central_dp(build_strategy("fedavg", min_nodes=2), _config(tmp_path), model, [], state)
    assert resumed.epsilon() == wrapper.epsilon()
    with pytest.raises(ValueError, match="cannot resume under central DP"):
        wrap_central_dp(build_strategy("fedavg", min_nodes=2), _config(tmp_path, central_dp_delta=1e-6), model, [],
                        state)


def test_batchnorm_and_non_mean_aggregation_are_refused(tmp_path):
    model = TJNet(TJNetConfig(image_size=48, width=0.25, norm="batch"))
    keys = list(parameter_groups(model, ()).shared)
    with pytest.raises(ValueError, match="BatchNorm"):
        wrap_central_dp(build_strategy("fedavg", min_nodes=2), _config(tmp_path), model, keys, None)
    local_norms = list(parameter_groups(model, (), "norm").shared)  # BatchNorm stays at the sites: allowed
    wrap_central_dp(build_strategy("fedavg", min_nodes=2), _config(tmp_path), model, local_norms, None)
    with pytest.raises(ValueError, match="mean aggregation"):
        wrap_central_dp(build_strategy("fedmedian", min_nodes=2), _config(tmp_path), torch.nn.Linear(1, 1), [], None)


def test_a_round_with_a_dead_or_late_site_releases_nothing_and_records_every_site(tmp_path, monkeypatch):
    for attribute in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attribute, 1)
    global_arrays = {"block6.weight": np.ones(3, np.float32)}
    reports = []
    strategy = build_strategy("fedavg", min_nodes=3, on_site_reports=lambda phase, rnd, rs: reports.append(rs))
    wrapper = wrap_central_dp(strategy, _config(tmp_path, min_nodes=3), torch.nn.Linear(1, 1), [], None)
    sent = {msg.metadata.dst_node_id: msg for msg in wrapper.configure_train(
        1, ArrayRecord({k: Array(v) for k, v in global_arrays.items()}), ConfigRecord(), FakeGrid([1, 2, 3]))}
    for node, msg in sent.items():  # pushed, as a Grid does
        msg.metadata.__dict__["_message_id"] = f"request-{node}"
    replies = [_reply(sent[1], {"block6.weight": np.full(3, 2.0, np.float32)}, 1.0),
               create_message_error_unavailable_res_message(sent[2].metadata, "node_unavail")]  # node 3: late
    assert wrapper.aggregate_train(1, replies) == (None, None)
    assert wrapper.accountant.num_releases == 0
    assert sorted((r.node_id, r.status) for r in reports[-1]) == [(1, "ok"), (2, "error"), (3, "no-reply")]
