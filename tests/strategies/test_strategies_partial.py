"""PartialModelStrategy on real Flower Messages: config, per-key aggregation, rejections, reports."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.server.superlink.linkstate.utils import create_message_error_unavailable_res_message

from deploy.site_report import site_report
from server.tracking import MetricsTracker
from strategies import NoSiteTrained, PartialModelStrategy, SiteReport, build_strategy
from strategies.partial import NO_REPLY_REASON, read_reply, weighted_mean_metrics

GLOBAL = {
    "block5.weight": np.zeros((2, 2), np.float32),
    "block6.weight": np.ones(3, np.float32),
    "block6.bn.num_batches_tracked": np.array(4, np.int64),
}


pytestmark = pytest.mark.usefixtures("flower_identity")  # Messages built outside a Flower process


class FakeGrid:
    """The one Grid method FedAvg's sampling uses."""

    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = node_ids

    def get_node_ids(self) -> list[int]:
        return self.node_ids


class Reports:
    """Collects what `on_site_reports` receives."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, list[SiteReport]]] = []

    def __call__(self, phase: str, server_round: int, reports: list[SiteReport]) -> None:
        self.calls.append((phase, server_round, reports))

    def by_node(self) -> dict[int, SiteReport]:
        return {r.node_id: r for r in self.calls[-1][2]}


def array_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in arrays.items()})


def configure(strategy: PartialModelStrategy, nodes: list[int], server_round: int = 1) -> dict[int, Message]:
    sent = strategy.configure_train(server_round, array_record(GLOBAL), ConfigRecord(), FakeGrid(nodes))
    return {m.metadata.dst_node_id: m for m in sent}


def reply(msg: Message, arrays: dict[str, np.ndarray], **metrics: float) -> Message:
    content = RecordDict({"arrays": array_record(arrays), "metrics": MetricRecord(metrics)})
    return Message(content, reply_to=msg)


def test_round_offset_and_proximal_mu_in_train_config() -> None:
    strategy = build_strategy("fedprox", round_offset=7, proximal_mu=0.05)
    sent = configure(strategy, [11, 12], server_round=2)
    assert sorted(sent) == [11, 12]
    for msg in sent.values():
        assert msg.content["config"]["server-round"] == 9
        assert msg.content["config"]["proximal-mu"] == 0.05
        assert list(msg.content["arrays"].keys()) == list(GLOBAL)
    evaluate = strategy.configure_evaluate(2, array_record(GLOBAL), ConfigRecord(), FakeGrid([11]))
    assert [m.content["config"]["server-round"] for m in evaluate] == [9]
    silent = build_strategy("fedavg", fraction_evaluate=0.0)
    assert list(silent.configure_evaluate(1, array_record(GLOBAL), ConfigRecord(), FakeGrid([11, 12]))) == []


def test_subset_replies_aggregated_per_key_with_reports() -> None:
    reports = Reports()
    strategy = build_strategy("fedavg", on_site_reports=reports)
    sent = configure(strategy, [1, 2])
    full = {"block5.weight": np.full((2, 2), 2.0, np.float32), "block6.weight": np.full(3, 3.0, np.float32),
            "block6.bn.num_batches_tracked": np.array(9)}
    deeper_freeze = {"block6.weight": np.full(3, 7.0, np.float32)}  # froze block 5 as well
    replies = [reply(sent[1], full, **{"num-examples": 1, "loss": 2.0, "site-id": 4}),
               reply(sent[2], deeper_freeze, **{"num-examples": 3, "loss": 4.0, "mae": 6.0})]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert list(arrays.keys()) == list(GLOBAL)
    out = {k: a.numpy() for k, a in arrays.items()}
    np.testing.assert_allclose(out["block5.weight"], 2.0)  # only site 4 trained it
    np.testing.assert_allclose(out["block6.weight"], 6.0)  # (1 * 3 + 3 * 7) / 4
    assert out["block6.bn.num_batches_tracked"] == 9
    assert dict(metrics) == pytest.approx({"loss": 3.5, "mae": 6.0})  # "mae" only from site 2
    phase, server_round, _ = reports.calls[-1]
    by_node = reports.by_node()
    assert (phase, server_round) == ("train", 1)
    assert (by_node[1].site, by_node[1].status, by_node[1].keys_returned) == ("4", "ok", 3)
    assert (by_node[2].site, by_node[2].keys_returned) == ("2", 1)
    assert by_node[2].bytes_returned > 12


def test_fedadam_accepts_subset_replies() -> None:
    strategy = build_strategy("fedadam")
    sent = configure(strategy, [1])
    arrays, _ = strategy.aggregate_train(1, [reply(sent[1], {"block6.weight": np.full(3, 2.0, np.float32)},
                                                   **{"num-examples": 5})])
    out = {k: a.numpy() for k, a in arrays.items()}
    np.testing.assert_array_equal(out["block5.weight"], GLOBAL["block5.weight"])
    np.testing.assert_allclose(out["block6.weight"], 1.0 + 0.1 * 0.1 / (0.1 + 1e-3), rtol=1e-6)


def test_bad_replies_rejected_with_reasons_and_others_aggregated(caplog: pytest.LogCaptureFixture) -> None:
    reports = Reports()
    strategy = build_strategy("fedavg", round_offset=3, on_site_reports=reports)
    sent = configure(strategy, [1, 2, 3, 4, 5])
    nan = np.ones(3, np.float32)
    nan[1] = np.nan
    replies = [
        reply(sent[1], {"block6.weight": np.full(3, 5.0, np.float32)}, **{"num-examples": 2}),
        reply(sent[2], {"block6.weight": nan}, **{"num-examples": 2}),
        reply(sent[3], {"block6.weight": np.ones(4, np.float32)}, **{"num-examples": 2}),
        reply(sent[4], {"head.fc.weight": np.ones(1, np.float32)}, **{"num-examples": 2}),
        Message(Error(code=0, reason="CUDA out of memory"), reply_to=sent[5]),
    ]
    with caplog.at_level(logging.WARNING, logger="strategies.partial"):
        arrays, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["block6.weight"].numpy(), 5.0)
    by_node = reports.by_node()
    assert reports.calls[-1][1] == 4
    assert [by_node[n].status for n in range(1, 6)] == ["ok", "rejected", "rejected", "rejected", "error"]
    assert by_node[2].reason == "non-finite values in block6.weight"
    assert "shape mismatch for block6.weight" in by_node[3].reason
    assert "unknown key" in by_node[4].reason and "head.fc.weight" in by_node[4].reason
    assert by_node[5].reason == "CUDA out of memory"
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 4


def test_a_round_in_which_no_site_trained_fails_the_run() -> None:
    reports = Reports()
    strategy = build_strategy("fedavgm", server_momentum=0.9, on_site_reports=reports)
    sent = configure(strategy, [1, 2, 3])
    replies = [
        reply(sent[1], {"block6.weight": np.full(3, np.inf, np.float32)}, **{"num-examples": 2}),
        reply(sent[2], {"block6.weight": np.ones(3, np.float32)}, loss=1.0),  # no num-examples
        Message(RecordDict({"metrics": MetricRecord({"num-examples": 2})}), reply_to=sent[3]),  # no arrays
    ]
    with pytest.raises(NoSiteTrained, match=r"train round 1: no site trained \(site 1 rejected: non-finite") as info:
        strategy.aggregate_train(1, replies)
    assert "\n" not in str(info.value)
    assert [r.status for r in reports.calls[-1][2]] == ["rejected"] * 3
    assert strategy.state_dict()["momentum"] == {}
    with pytest.raises(NoSiteTrained, match="no site was sampled"):
        strategy.aggregate_train(1, [])


def test_evaluate_weighted_metrics_and_per_site_reports() -> None:
    reports = Reports()
    strategy = build_strategy("fedmedian", on_site_reports=reports)
    sent = {m.metadata.dst_node_id: m for m in
            strategy.configure_evaluate(1, array_record(GLOBAL), ConfigRecord(), FakeGrid([1, 2, 3]))}
    replies = [
        Message(RecordDict({"metrics": MetricRecord({"num-examples": 1, "mae": 10.0})}), reply_to=sent[1]),
        Message(RecordDict({"metrics": MetricRecord({"num-examples": 3, "mae": 6.0})}), reply_to=sent[2]),
        Message(Error(code=1, reason="timeout"), reply_to=sent[3]),
    ]
    assert dict(strategy.aggregate_evaluate(1, replies)) == pytest.approx({"mae": 7.0})
    phase, _, site_reports = reports.calls[-1]
    assert phase == "evaluate"
    assert [(r.status, r.metrics.get("mae")) for r in site_reports] == [("ok", 10.0), ("ok", 6.0), ("error", None)]
    assert strategy.aggregate_evaluate(1, replies[2:]) is None


def test_strategy_state_dict_delegates_to_aggregator() -> None:
    strategy = build_strategy("fedadam")
    sent = configure(strategy, [1])
    strategy.aggregate_train(1, [reply(sent[1], {"block6.weight": np.zeros(3, np.float32)}, **{"num-examples": 1})])
    resumed = build_strategy("fedadam")
    resumed.load_state_dict(strategy.state_dict())
    assert resumed.aggregator.step == {"block6.weight": 1}


class LoopbackGrid(FakeGrid):
    """Answers each message at once: node 1 trains block 6 only, node 2 always fails."""

    def send_and_receive(self, messages: list[Message], *, timeout: float | None = None) -> list[Message]:
        replies = []
        for msg in messages:
            if msg.metadata.dst_node_id == 2:
                replies.append(Message(Error(code=0, reason="site offline"), reply_to=msg))
                continue
            content = {"metrics": MetricRecord({"num-examples": 8, "site-id": 1, "mae": 5.0})}
            if msg.metadata.message_type.startswith("train"):
                trained = msg.content["arrays"]["block6.weight"].numpy() + 1.0
                content["arrays"] = array_record({"block6.weight": trained})
            replies.append(Message(RecordDict(content), reply_to=msg))
        return replies


def test_start_runs_rounds_with_a_partial_site_and_a_failing_site() -> None:
    reports = Reports()
    strategy = build_strategy("fedavg", round_offset=5, on_site_reports=reports)
    result = strategy.start(grid=LoopbackGrid([1, 2]), initial_arrays=array_record(GLOBAL), num_rounds=2)
    out = {k: a.numpy() for k, a in result.arrays.items()}
    np.testing.assert_allclose(out["block6.weight"], 3.0)  # 1 + 1 per round
    np.testing.assert_array_equal(out["block5.weight"], GLOBAL["block5.weight"])
    assert [(phase, rnd) for phase, rnd, _ in reports.calls] == [
        ("train", 6), ("evaluate", 6), ("train", 7), ("evaluate", 7)
    ]
    assert {r.status for _, _, rs in reports.calls for r in rs} == {"ok", "error"}
    assert dict(result.evaluate_metrics_clientapp[2]) == pytest.approx({"mae": 5.0})


def test_age_group_mads_are_weighted_by_their_own_counts_and_suppressed_groups_do_not_count() -> None:
    a = {"mad-months": 10.0, "mad-0-2y": 4.0, "n-0-2y": 6, "mad-2-5y": 0.0, "n-2-5y": 0}  # 2-5y suppressed
    b = {"mad-months": 20.0, "mad-0-2y": 8.0, "n-0-2y": 2, "mad-2-5y": 9.0, "n-2-5y": 7}
    mean = weighted_mean_metrics([(a, 30.0), (b, 10.0)], skip=())
    assert mean["mad-months"] == 12.5  # by num-examples
    assert mean["mad-0-2y"] == 5.0 and mean["mad-2-5y"] == 9.0  # by n-<group>


class PushingGrid(FakeGrid):
    """Sends as Flower's grids do (each message gets an id when pushed) and answers from `behaviour`:
    node -> {round: "ok" | "dead" | "late"}. A dead node is answered for by the SuperLink, with Flower's own
    "Node Unavailable" reply (from node 1); a late node's reply is not back when the timeout ends."""

    def __init__(self, behaviour: dict[int, dict[int, str]]) -> None:
        super().__init__(sorted(behaviour))
        self.behaviour, self.round = behaviour, 0

    def send_and_receive(self, messages: list[Message], *, timeout: float | None = None) -> list[Message]:
        replies = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = f"request-{msg.object_id}"
            self.round = int(msg.content["config"]["server-round"])
            node, how = msg.metadata.dst_node_id, self.behaviour[msg.metadata.dst_node_id][self.round]
            if how == "dead":
                replies.append(create_message_error_unavailable_res_message(msg.metadata, "node_unavail"))
            elif how == "ok":
                content = {"metrics": MetricRecord({"num-examples": 4, "site-id": node - 10})}
                if msg.metadata.message_type.startswith("train"):
                    content["arrays"] = array_record({"block6.weight": np.full(3, float(node), np.float32)})
                replies.append(Message(RecordDict(content), reply_to=msg))
        return replies


def test_a_dead_node_is_named_by_the_request_and_a_missing_reply_gets_a_row(tmp_path: Path) -> None:
    reports, tracker = Reports(), MetricsTracker(tmp_path)

    def record(phase: str, server_round: int, site_reports: list[SiteReport]) -> None:
        reports(phase, server_round, site_reports)
        tracker.site_reports(phase, server_round, site_reports)

    strategy = build_strategy("fedavg", on_site_reports=record)
    grid = PushingGrid({11: {1: "ok", 2: "ok"}, 12: {1: "ok", 2: "dead"}, 13: {1: "late", 2: "dead"}})
    result = strategy.start(grid=grid, initial_arrays=array_record(GLOBAL), num_rounds=2, timeout=5)
    tracker.close()
    rows = {(phase, rnd, r.node_id): (r.site, r.status, r.reason) for phase, rnd, rs in reports.calls for r in rs}
    assert len(rows) == sum(len(rs) for _, _, rs in reports.calls) == 12  # one report per site and phase
    assert rows[("train", 1, 13)] == ("13", "no-reply", "no reply within the run's timeout")
    assert rows[("evaluate", 1, 13)][1] == "no-reply"
    site, status, reason = rows[("train", 2, 12)]
    assert (site, status) == ("2", "error") and reason.startswith("Error: Node Unavailable")  # its site-id of round 1
    assert rows[("train", 2, 13)][:2] == ("13", "error")  # never answered: named by its node id
    assert {rows[("train", n, 11)] for n in (1, 2)} == {("1", "ok", "")}
    np.testing.assert_allclose(result.arrays["block6.weight"].numpy(), 11.0)  # round 2: node 11 alone
    assert site_report(tmp_path / "metrics.csv", 1)[1]["13"]["status"] == "evaluate no-reply: " + NO_REPLY_REASON
    assert "error: Error: Node Unavailable" in site_report(tmp_path / "metrics.csv", 2)[1]["2"]["status"]


def test_a_named_site_sending_site_id_minus_one_is_reported_by_its_node_id() -> None:
    content = RecordDict({"metrics": MetricRecord({"num-examples": 1, "site-id": -1})})
    assert read_reply(42, content, "num-examples", with_arrays=False)[0].site == "42"
