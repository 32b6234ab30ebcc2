"""What the partial-model strategy tells the operator and the server's checks: the reply check's verdicts, the
rounds after a resume, log lines, reasons, unreleased rounds (written for the mutants `mutmut` left alive in
`strategies/partial.py`; docs/mutation.md)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from flwr.app import ConfigRecord, Error, Message, MetricRecord, RecordDict

from strategies import NoSiteTrained, PartialModelStrategy, build_strategy
from strategies.aggregation import build_aggregator
from strategies.partial import read_reply, site_name, weighted_mean_metrics
from tests.strategies.test_strategies_partial import GLOBAL, FakeGrid, Reports, array_record, configure, reply

pytestmark = pytest.mark.usefixtures("flower_identity")  # Messages built outside a Flower process


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "strategies.partial"]


def test_the_reply_check_sees_each_trained_reply_and_its_refusal_keeps_the_update_out(
        caplog: pytest.LogCaptureFixture) -> None:
    seen = []

    def check(site: str, server_round: int, metrics: dict[str, float]) -> str:
        seen.append((site, server_round, metrics))
        return "epsilon 9 above the budget 8" if site == "7" else ""

    reports = Reports()
    strategy = build_strategy("fedavg", round_offset=2, on_site_reports=reports, reply_check=check)
    sent = configure(strategy, [1, 2, 3])
    replies = [reply(sent[1], {"block6.weight": np.full(3, 5.0, np.float32)}, **{"num-examples": 2, "site-id": 7}),
               reply(sent[2], {"block6.weight": np.full(3, 2.0, np.float32)}, **{"num-examples": 2, "site-id": 0}),
               Message(Error(code=0, reason="out of memory"), reply_to=sent[3])]
    with caplog.at_level(logging.INFO, logger="strategies.partial"):
        arrays, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["block6.weight"].numpy(), 2.0)  # site 7's update left out
    assert seen == [("7", 3, {"num-examples": 2, "site-id": 7}), ("0", 3, {"num-examples": 2, "site-id": 0})]
    by_node = reports.by_node()
    assert [(by_node[n].status, by_node[n].site, by_node[n].reason, by_node[n].round) for n in (1, 2, 3)] == [
        ("rejected", "7", "epsilon 9 above the budget 8", 3), ("ok", "0", "", 3), ("error", "3", "out of memory", 3)]
    assert _messages(caplog) == ["train round 3: rejected from site 7: epsilon 9 above the budget 8",
                                 "train round 3: error from site 3: out of memory",
                                 "train round 3: 1 of 3 replies accepted"]
    caplog.clear()
    sent = configure(strategy, [1, 2], server_round=2)  # node 2 (site 0) fails round 2: still named site 0
    with caplog.at_level(logging.INFO, logger="strategies.partial"):
        strategy.aggregate_train(2, [reply(sent[1], {"block6.weight": np.ones(3, np.float32)},
                                           **{"num-examples": 1, "site-id": 5}),
                                     Message(Error(code=0, reason="disk full"), reply_to=sent[2])])
    assert [(r.site, r.status, r.round) for r in reports.calls[-1][2]] == [("5", "ok", 4), ("0", "error", 4)]
    assert _messages(caplog)[-2:] == ["train round 4: error from site 0: disk full",
                                      "train round 4: 1 of 2 replies accepted"]


def test_evaluation_replies_are_logged_as_evaluation_and_never_checked(caplog: pytest.LogCaptureFixture) -> None:
    strategy = build_strategy("fedavg", round_offset=1, reply_check=lambda *a: pytest.fail("checked an evaluation"))
    sent = {m.metadata.dst_node_id: m for m in
            strategy.configure_evaluate(1, array_record(GLOBAL), ConfigRecord(), FakeGrid([1, 2]))}
    replies = [Message(RecordDict({"metrics": MetricRecord({"num-examples": 1, "mae": 3.0})}), reply_to=sent[1]),
               Message(Error(code=1, reason="timeout"), reply_to=sent[2])]
    with caplog.at_level(logging.INFO, logger="strategies.partial"):
        assert dict(strategy.aggregate_evaluate(1, replies)) == {"mae": 3.0}
    assert _messages(caplog) == ["evaluate round 2: error from site 2: timeout", "evaluate round 2: 1 of 2 replies accepted"]


def test_a_round_nobody_trained_names_the_resumed_round_and_every_site() -> None:
    strategy = build_strategy("fedavg", round_offset=5)
    sent = configure(strategy, [1, 2])
    with pytest.raises(NoSiteTrained, match=r"^train round 6: no site trained \(no site was sampled\)$"):
        strategy.aggregate_train(1, [])
    replies = [reply(sent[n], {"block6.weight": np.ones(3, np.float32)}, loss=1.0) for n in (1, 2)]
    with pytest.raises(NoSiteTrained, match=r"^train round 6: no site trained \(site 1 rejected: 'num-examples' is "
                                            r"None, need a number > 0; site 2 rejected: 'num-examples' is None"):
        strategy.aggregate_train(1, replies)
    with pytest.raises(RuntimeError, match="^aggregate_train called before configure_train: no global arrays"):
        build_strategy("fedavg").aggregate_train(1, [])


def test_an_unreleased_round_still_reports_every_site_under_its_resumed_round() -> None:
    reports = Reports()
    strategy = build_strategy("fedavg", round_offset=2, on_site_reports=reports)
    strategy.record_unreleased(1, [])
    assert reports.calls == []  # nothing was sent yet: nothing to report
    sent = configure(strategy, [1, 2])
    broken = np.array([1.0, np.nan, 1.0], np.float32)
    strategy.record_unreleased(1, [reply(sent[1], {"block6.weight": np.ones(3, np.float32)}, **{"num-examples": 2}),
                                   reply(sent[2], {"block6.weight": broken}, **{"num-examples": 2})])
    phase, server_round, site_reports = reports.calls[-1]
    assert (phase, server_round) == ("train", 3)
    assert [(r.node_id, r.status, r.round) for r in site_reports] == [(1, "ok", 3), (2, "rejected", 3)]  # checked


def test_the_summary_names_the_aggregator_its_options_and_the_round_offset(caplog: pytest.LogCaptureFixture) -> None:
    strategy = build_strategy("fedavgm", round_offset=3, server_momentum=0.5)
    with caplog.at_level(logging.INFO, logger="strategies.partial"):
        strategy.summary()
    assert _messages(caplog) == [f"\t├──> Partial-model aggregation: fedavgm {strategy.aggregator.options()}",
                                 "\t├──> Round offset: 3"]


def test_a_strategy_built_directly_samples_one_site_of_all_from_round_one() -> None:
    strategy = PartialModelStrategy(build_aggregator("fedavg"))
    assert (strategy.fraction_train, strategy.fraction_evaluate, strategy.min_train_nodes,
            strategy.min_evaluate_nodes, strategy.min_available_nodes, strategy.round_offset) == (1.0, 1.0, 1, 1, 1, 0)
    built = build_strategy("fedavg", min_nodes=3)
    assert (built.min_train_nodes, built.min_evaluate_nodes, built.min_available_nodes) == (3, 3, 3)


def test_reply_reasons_name_what_is_wrong() -> None:
    def content(weight: float, metric_records: int = 1, array_records: int = 1) -> RecordDict:
        records = {f"m{i}": MetricRecord({"num-examples": weight}) for i in range(metric_records)}
        records.update({f"a{i}": array_record({"block6.weight": np.ones(3, np.float32)}) for i in range(array_records)})
        return RecordDict(records)

    reasons = [read_reply(1, content(*args), "num-examples", True)[0].reason
               for args in ((2.0, 2), (0.0,), (float("inf"),), (2.0, 1, 2))]
    assert reasons == ["expected one MetricRecord, got 2", "'num-examples' is 0.0, need a number > 0",
                       "'num-examples' is inf, need a number > 0", "expected one ArrayRecord, got 2"]
    assert site_name(9, {"site-id": 0}) == "0" and site_name(9, {"site-id": -1}) == "9"


def test_a_group_no_site_counted_is_left_out_and_a_count_of_one_is_kept() -> None:
    rows = [({"mad-a": 5.0, "n-a": 0, "mad-b": 4.0, "n-b": 1}, 2.0)]
    assert weighted_mean_metrics(rows, skip=()) == {"mad-b": 4.0, "n-a": 0.0, "n-b": 1.0}
