"""The server's own record of each private site's epsilon: a site cannot reset its budget by editing its files."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Message, MetricRecord, RecordDict

from server.site_privacy import SitePrivacyRecord
from strategies import build_strategy
from tests.strategies.test_strategies_partial import GLOBAL, Reports, configure, reply

PRIVATE = {"private": 1.0, "delta": 1e-3}


def test_a_site_whose_ledger_claims_less_than_the_server_saw_is_refused() -> None:
    record = SitePrivacyRecord()
    assert record.check("3", 1, {**PRIVATE, "epsilon": 2.0}) == ""
    assert record.check("3", 2, {**PRIVATE, "epsilon": 3.0}) == ""
    reason = record.check("3", 3, {**PRIVATE, "epsilon": 0.9})  # its ledger cut to the first line
    assert "reports epsilon 0.9, below the 3 the server recorded in round 2" in reason and "reset or edited" in reason
    assert record.check("4", 3, {**PRIVATE, "epsilon": 0.9}) == ""  # another site is its own record
    assert record.sites["3"].epsilon == 3.0  # the low claim does not lower the record


def test_dropping_dp_raising_delta_or_an_impossible_epsilon_is_refused() -> None:
    record = SitePrivacyRecord()
    assert record.check("1", 1, {"private": 0.0, "epsilon": 0.0, "delta": 0.0}) == ""  # never private: fine
    record.check("2", 1, {**PRIVATE, "epsilon": 2.0})
    assert "now trained without privacy" in record.check("2", 2, {"private": 0.0, "epsilon": 0.0, "delta": 0.0})
    assert "reports delta 0.5, above the 0.001" in record.check("2", 2, {"private": 1.0, "epsilon": 2.5, "delta": 0.5})
    for epsilon in (-3.03, float("nan"), float("inf"), 0.0):
        assert "not a guarantee" in record.check("5", 1, {**PRIVATE, "epsilon": epsilon})


def test_the_record_survives_a_resume_through_its_state() -> None:
    record = SitePrivacyRecord()
    record.check("3", 4, {**PRIVATE, "epsilon": 3.0})
    resumed = SitePrivacyRecord(record.state_dict())
    assert "below the 3 the server recorded in round 4" in resumed.check("3", 5, {**PRIVATE, "epsilon": 1.0})


pytestmark = pytest.mark.usefixtures("flower_identity")  # Messages built outside a Flower process


def test_the_strategy_leaves_a_refused_private_update_out_of_the_average() -> None:
    record, reports = SitePrivacyRecord(), Reports()
    record.check("1", 1, {**PRIVATE, "epsilon": 5.0})
    strategy = build_strategy("fedavg", on_site_reports=reports, reply_check=record.check)
    sent = configure(strategy, [1, 2], server_round=2)
    honest = {"block6.weight": np.full(3, 2.0, np.float32)}
    reset = {"block6.weight": np.full(3, 9.0, np.float32)}
    replies = [reply(sent[1], reset, **{"num-examples": 4, "site-id": 1, **PRIVATE, "epsilon": 1.0}),
               reply(sent[2], honest, **{"num-examples": 4, "site-id": 2, **PRIVATE, "epsilon": 1.0})]
    arrays, _ = strategy.aggregate_train(2, replies)
    assert np.allclose(arrays["block6.weight"].numpy(), 2.0)  # only the honest site's update
    by_site = {r.site: r for r in reports.calls[-1][2]}
    assert by_site["1"].status == "rejected" and "reset or edited" in by_site["1"].reason
    assert by_site["2"].status == "ok"
    assert set(GLOBAL) >= set(arrays.keys())


def test_the_federation_keeps_the_record_in_its_checkpoint_and_a_resume_restores_it(tmp_path) -> None:
    from dataclasses import replace

    import torch

    from core.checkpoint import describe, save_checkpoint
    from core.model.config import TJNetConfig
    from core.model.tjnet import TJNet
    from server.config import FederationConfig
    from server.federation import Federation

    torch.manual_seed(0)
    model = TJNet(TJNetConfig(image_size=32, width=0.25))
    config = FederationConfig(pretrained=save_checkpoint(tmp_path / "pre.pt", model, describe(model)),
                              out_dir=tmp_path / "run", device="cpu")
    first = Federation(config)
    first.site_privacy.check("3", 1, {**PRIVATE, "epsilon": 3.0})
    first._checkpoint(1)
    first.tracker.close()
    resumed = Federation(replace(config, resume=True))
    resumed.tracker.close()
    assert resumed.start_round == 1
    assert "below the 3 the server recorded in round 1" in resumed.strategy.reply_check("3", 2, {**PRIVATE,
                                                                                                "epsilon": 1.0})
