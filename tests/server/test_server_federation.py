"""A tiny federation end to end in Flower's simulation engine: training, per-round checkpoints,
resume after a crash, heterogeneous freezing, audit logs and metrics."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from core.checkpoint import load_checkpoint
from core.errors import ResumeMismatch
from core.model.freeze import block_of_key
from core.model.groups import norm_layer_keys
from core.round_settings import RoundSettings
from server.config import FederationConfig
from server.federation import Federation
from sim.federation import SimulatedRun


ENGINE_IMAGES = 40
RUN_NAMES = ("straight", "crashed1", "crashed", "mixed", "private", "exhausted", "fedbn")


def engine_runs(root: Path, tiny) -> list[SimulatedRun]:
    """This module's federations on `tiny` (tests/conftest.py's TinySites), in the order of RUN_NAMES; they run in
    the suite's one engine session (`engine_session`)."""

    def run(name: str, rounds: int, resume: bool = False, local_layers: str = "none", central: Path | None = None,
            per_site: tuple[dict, ...] = (), strategy: str = "fedavg", **site_extra) -> SimulatedRun:
        settings = RoundSettings(num_rounds=rounds, freeze=(1, 2, 3), batch_size=8, local_layers=local_layers)
        config = FederationConfig(pretrained=tiny.pretrained, settings=settings, out_dir=root / name,
                                  strategy=strategy, min_nodes=2, resume=resume, central_data=central, device="cpu")
        return SimulatedRun(config, tiny.nodes(root / name / "state", per_site, **site_extra))

    # fedavgm carries server momentum from round 1 into round 2: a resume must restore it
    return [run("straight", 2, strategy="fedavgm"), run("crashed", 1, strategy="fedavgm"),
            run("crashed", 2, resume=True, strategy="fedavgm"),
            run("mixed", 1, central=tiny.sites[0], per_site=({}, {"freeze": "1-4"})),
            run("private", 2, **{"dp-noise-multiplier": 1.0, "dp-max-epsilon": 100.0, "dp-seed": 3}),
            run("exhausted", 1, **{"dp-noise-multiplier": 1.0, "dp-max-epsilon": 0.01}),
            run("fedbn", 2, local_layers="norm")]


@pytest.fixture(scope="module")
def federation(engine_result):
    return engine_result.root, engine_result.tiny.pretrained, dict(zip(RUN_NAMES, engine_result.outcomes))


def test_resume_after_round_one_gives_the_same_final_model_with_a_stateful_strategy(federation):
    root, _, _ = federation
    straight = load_checkpoint(root / "straight" / "federated_final.pt").model.state_dict()
    resumed = load_checkpoint(root / "crashed" / "federated_final.pt").model.state_dict()
    for key, value in straight.items():
        assert torch.equal(value, resumed[key]), key


def test_only_unfrozen_blocks_change_and_checkpoints_carry_metadata(federation):
    root, pretrained, _ = federation
    before = load_checkpoint(pretrained).model.state_dict()
    final = load_checkpoint(root / "straight" / "federated_final.pt")
    after = final.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if block_of_key(k) <= 3)
    assert any(not torch.equal(before[k], after[k]) for k in before if block_of_key(k) >= 4)
    latest = load_checkpoint(root / "straight" / "federated_latest.pt")
    assert latest.metadata["round"] == 2 and latest.metadata["strategy"] == "fedavgm"
    assert latest.metadata["strategy_state"]["momentum"]  # the server momentum is checkpointed
    assert latest.metadata["frozen_blocks"] == [1, 2, 3]


def test_metrics_are_tracked_per_site_and_round(federation):
    root, _, _ = federation
    with open(root / "straight" / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    evaluated = {(r["round"], r["site"]) for r in rows if r["phase"] == "evaluate" and r["metric"] == "mad-months"}
    assert evaluated == {("1", "0"), ("1", "1"), ("2", "0"), ("2", "1")}
    trained = [r for r in rows if r["phase"] == "train" and r["metric"] == "num-examples"]
    assert len(trained) == 4 and all(float(r["value"]) > 0 for r in trained)
    timing = {(r["round"], r["metric"]): float(r["value"]) for r in rows if r["phase"] == "central"}
    for round_number in ("1", "2"):  # the framework's share of a round can be read from every run
        assert timing[(round_number, "round-seconds")] > 0
        assert timing[(round_number, "sites-seconds")] >= timing[(round_number, "sites-train-seconds")] > 0
    site_seconds = [r for r in rows if r["metric"] == "site-seconds"]
    assert {r["phase"] for r in site_seconds} == {"train", "evaluate"} and len(site_seconds) == 8


def test_audit_log_records_what_left_each_site(federation):
    root, _, _ = federation
    for state in sorted((root / "straight" / "state").iterdir()):
        entries = [json.loads(line) for line in (state / "audit.jsonl").read_text().splitlines()]
        train = [e for e in entries if e["kind"] == "train"]
        assert [e["round"] for e in train] == [1, 2]
        assert all(e["bytes"] > 0 and len(e["sha256"]) == 64 and e["array_keys"] for e in train)
        assert all(block_of_key(k) >= 4 for e in train for k in e["array_keys"])
        assert all("id" not in e["metrics"] for e in entries)


def test_a_site_freezing_deeper_returns_fewer_blocks_and_is_aggregated_per_key(federation):
    root, pretrained, _ = federation
    audits = {p.name: [json.loads(x) for x in (p / "audit.jsonl").read_text().splitlines()]
              for p in (root / "mixed" / "state").iterdir()}
    blocks = {name: {block_of_key(k) for e in entries if e["kind"] == "train" for k in e["array_keys"]}
              for name, entries in audits.items()}
    assert sorted(map(sorted, blocks.values())) == [[4, 5, 6], [5, 6]]
    before = load_checkpoint(pretrained).model.state_dict()
    after = load_checkpoint(root / "mixed" / "federated_final.pt").model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if block_of_key(k) == 4)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_dp_sites_report_a_growing_cumulative_epsilon_from_their_ledgers(federation):
    root, _, _ = federation
    rows = [r for r in _rows(root / "private" / "metrics.csv") if r["metric"] == "epsilon"]
    by_site: dict[str, list[float]] = {}
    for r in rows:
        by_site.setdefault(r["site"], []).append(float(r["value"]))
    assert set(by_site) == {"0", "1"}
    assert all(len(v) == 2 and 0 < v[0] < v[1] for v in by_site.values())
    for state in (root / "private" / "state").iterdir():  # two rounds, then the interval's score counts
        entries = [json.loads(line) for line in (state / "privacy_ledger.jsonl").read_text().splitlines()]
        assert len(entries) == 3 and entries[-1]["release"] == "interval score counts"
    train = [r for r in _rows(root / "private" / "metrics.csv") if r["phase"] == "train"]
    withheld = [float(r["value"]) for r in train if r["metric"] in ("train-loss", "train-mad-months")]
    assert withheld and set(withheld) == {0.0}  # the noiseless training loss stays at the site
    assert {float(r["value"]) for r in train if r["metric"] == "private"} == {1.0}
    seen = load_checkpoint(root / "private" / "federated_latest.pt").metadata["site_privacy"]  # kept for a resume
    assert {site: (record["epsilon"], record["round"]) for site, record in seen.items()} == {
        site: (values[1], 2) for site, values in by_site.items()}


def test_a_round_in_which_every_site_refuses_fails_the_run_without_a_final_model(federation):
    root, _, outcomes = federation
    refusals = [r for r in _rows(root / "exhausted" / "metrics.csv") if r["status"] == "error"]
    assert {r["site"] for r in refusals} and all("BudgetExceeded" in r["reason"] for r in refusals)
    failed = outcomes["exhausted"]
    assert "train round 1: no site trained" in failed.failure and "BudgetExceeded" in failed.failure
    assert failed.final_checkpoint is None and failed.rounds_done == 0
    assert not (root / "exhausted" / "federated_final.pt").exists()  # never the pretrained weights as if trained
    assert not (root / "exhausted" / "federated_latest.pt").exists()
    assert outcomes["fedbn"].failure == "" and (root / "fedbn" / "federated_final.pt").exists()  # the next run went on
    for state in (root / "exhausted" / "state").iterdir():
        ledger = state / "privacy_ledger.jsonl"
        assert not ledger.exists() or ledger.read_text() == ""


def test_fedbn_keeps_normalisation_layers_at_the_sites(federation):
    root, pretrained, _ = federation
    norm_keys = set(norm_layer_keys(load_checkpoint(pretrained).model))
    for state in (root / "fedbn" / "state").iterdir():
        train = [json.loads(x) for x in (state / "audit.jsonl").read_text().splitlines() if '"train"' in x]
        sent = {k for e in train for k in e["array_keys"]}
        assert sent and not sent & norm_keys
    before = load_checkpoint(pretrained).model.state_dict()
    after = load_checkpoint(root / "fedbn" / "federated_final.pt").model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in norm_keys)
    assert any(not torch.equal(before[k], after[k]) for k in before if block_of_key(k) >= 4 and k not in norm_keys)


def test_the_server_evaluates_a_central_set_before_and_after_each_round(federation):
    root, _, _ = federation
    central = [r for r in _rows(root / "mixed" / "metrics.csv") if r["phase"] == "central" and r["metric"] == "mad_months"]
    assert [r["round"] for r in central] == ["0", "1"] and all(float(r["value"]) > 0 for r in central)


def test_the_outcome_carries_the_per_round_metrics_of_metrics_csv(federation):
    root, _, outcomes = federation
    outcome = outcomes["straight"]
    assert outcome.rounds_done == 2 and [r.round for r in outcome.rounds] == [1, 2]
    mad = outcome.per_round("evaluate", "mad-months")
    csv_mad = {}
    for r in _rows(root / "straight" / "metrics.csv"):
        if r["phase"] == "evaluate" and r["metric"] == "mad-months":
            csv_mad.setdefault(r["site"], []).append(float(r["value"]))
    assert mad == csv_mad and set(mad) == {"0", "1"}
    assert outcome.settings["strategy"] == "fedavgm" and outcome.settings["server-momentum"] == "0.9"
    exhausted = next(r for r in outcomes["exhausted"].rounds if r.round == 1)
    assert exhausted.refused and not exhausted.train


def test_every_site_sends_the_same_metric_keys_in_each_kind_of_reply(federation):
    _, _, outcomes = federation
    for name in ("straight", "mixed", "private"):
        for phase in ("train", "evaluate"):
            replies = [m for record in outcomes[name].rounds for m in getattr(record, phase).values()]
            assert len(replies) >= 2 and len({frozenset(m) for m in replies}) == 1, (name, phase)
    mixed = next(r.train for r in outcomes["mixed"].rounds if r.round == 1)
    assert {site: m["frozen-depth"] for site, m in mixed.items()} == {"0": 3, "1": 4}
    assert mixed["1"]["frozen-block-4"] == 1.0 and mixed["0"]["frozen-block-4"] == 0.0


def test_a_resume_under_a_different_run_config_is_refused_with_the_difference_named(federation):
    root, pretrained, _ = federation
    settings = RoundSettings(num_rounds=3, freeze=(1, 2, 3), batch_size=8, lr=1e-3)
    config = FederationConfig(pretrained=pretrained, settings=settings, out_dir=root / "crashed", strategy="fedavgm",
                              min_nodes=2, resume=True, device="cpu")
    with pytest.raises(ResumeMismatch, match=r"lr: 0.0003 -> 0.001"):
        Federation(config)
    other = FederationConfig(pretrained=pretrained, settings=replace(settings, lr=3e-4), out_dir=root / "crashed",
                             strategy="fedavgm", strategy_options={"server-momentum": 0.5}, min_nodes=2, resume=True)
    with pytest.raises(ResumeMismatch, match=r"server-momentum: 0.9 -> 0.5"):
        Federation(other)


def test_a_resumed_federation_keeps_its_id_so_the_sites_keep_their_own_layers(federation, tmp_path):
    root, pretrained, _ = federation
    latest = load_checkpoint(root / "crashed" / "federated_latest.pt").metadata
    final = load_checkpoint(root / "crashed" / "federated_final.pt").metadata
    straight = load_checkpoint(root / "straight" / "federated_final.pt").metadata
    assert len(latest["federation_id"]) == 32 and final["federation_id"] == latest["federation_id"]
    assert straight["federation_id"] != latest["federation_id"]
    (tmp_path / "federated_latest.pt").write_bytes((root / "crashed" / "federated_latest.pt").read_bytes())
    settings = RoundSettings(num_rounds=3, freeze=(1, 2, 3), batch_size=8)
    config = FederationConfig(pretrained=pretrained, settings=settings, out_dir=tmp_path, strategy="fedavgm",
                              min_nodes=2, resume=True, device="cpu")
    assert Federation(config).federation_id == latest["federation_id"]
    fresh = replace(config, resume=False, out_dir=tmp_path / "new")
    assert Federation(fresh).federation_id != latest["federation_id"]
