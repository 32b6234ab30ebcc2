"""The federated prediction interval from binned score counts (`core.federated_conformal`); the end-to-end run is in
tests/server/test_server_federation.py."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from core.conformal import ConformalError, conformal_quantile
from core.federated_conformal import (BIN_MONTHS, SiteCounts, account_release, coverage_from_counts, fit_federated,
                                      halfwidth_from_counts, noise_multiplier, score_counts)
from core.privacy import BudgetExceeded, DPConfig, PrivacyLedger


def test_the_binned_quantile_is_the_exact_one_rounded_up_to_its_bin_edge() -> None:
    rng = np.random.default_rng(0)
    for n in (*range(9, 60), 200, 1000):
        scores = np.abs(rng.normal(0, 25, n))
        exact = conformal_quantile(scores, 0.9)
        binned = halfwidth_from_counts(score_counts(scores), 0.9)
        assert binned == (np.floor(exact / BIN_MONTHS) + 1) * BIN_MONTHS  # the upper edge of the exact one's bin
        covered, counted = coverage_from_counts(score_counts(scores), binned)
        assert counted == n and covered == np.mean(scores < binned)
    with pytest.raises(ConformalError, match="at least 9"):
        halfwidth_from_counts(score_counts(np.arange(8.0)), 0.9)


def test_pooled_counts_give_the_interval_of_the_pooled_scores_and_per_site_figures() -> None:
    rng = np.random.default_rng(1)
    near, far = np.abs(rng.normal(0, 10, 300)), np.abs(rng.normal(0, 40, 100))
    sites = [SiteCounts("1", score_counts(near[:150]), score_counts(near[150:])),
             SiteCounts("2", score_counts(far[:50]), score_counts(far[50:]))]
    interval, summary = fit_federated(sites)
    pooled = np.concatenate([near[:150], far[:50]])
    assert interval.halfwidth_months == halfwidth_from_counts(score_counts(pooled), 0.9)
    assert interval.n == 200 and interval.halfwidth_months_sex_from_head is None
    assert summary["sites"] == 2 and summary["calibration_images"] == 200 and summary["test_images"] == 200
    one, two = summary["per_site"]["1"], summary["per_site"]["2"]
    assert one["pooled_test_coverage"] > 0.9 > two["pooled_test_coverage"]  # the far site needs its own interval
    assert two["own_halfwidth_months"] > interval.halfwidth_months > one["own_halfwidth_months"]


def test_a_private_release_is_accounted_in_the_ledger_and_refused_past_the_budget(tmp_path: Path) -> None:
    ledger = tmp_path / "privacy_ledger.jsonl"
    dp = DPConfig(enabled=True, noise_multiplier=1.0, delta=1e-5, max_epsilon=100.0)
    epsilon, delta = account_release(ledger, dp, 5.0, 100)
    entries = PrivacyLedger(ledger).entries()
    assert len(entries) == 1 and entries[0].mechanism == (noise_multiplier(5.0), 1.0, 1)
    assert math.isclose(noise_multiplier(5.0), 5.0 / math.sqrt(2)) and delta == 1e-5 and 0 < epsilon < 5
    tight = DPConfig(enabled=True, noise_multiplier=1.0, delta=1e-5, max_epsilon=epsilon * 1.01)
    with pytest.raises(BudgetExceeded):
        account_release(ledger, tight, 5.0, 100)
    assert len(PrivacyLedger(ledger).entries()) == 1


@pytest.fixture(scope="module")
def federated(tmp_path_factory: pytest.TempPathFactory, tiny_federation) -> tuple[Path, tuple[Path, ...]]:
    from core.round_settings import RoundSettings
    from server.config import FederationConfig
    from sim.federation import SimulatedRun, run_federations

    root = tmp_path_factory.mktemp("interval")
    tiny = tiny_federation(root, 100)
    settings = RoundSettings(num_rounds=1, freeze=(1, 2, 3, 4), batch_size=8)
    runs = [SimulatedRun(FederationConfig(pretrained=tiny.pretrained, settings=settings, out_dir=root / name,
                                          min_nodes=2, device="cpu"), tiny.nodes(root / name / "state", **extra))
            for name, extra in (("plain", {}),
                                ("private", {"dp-noise-multiplier": 1.0, "dp-seed": 3, "dp-max-epsilon": 100.0}))]
    run_federations(runs)
    return root, tiny.sites


def _audited_counts(state: Path) -> dict:
    import json

    entries = [json.loads(line) for line in (state / "audit.jsonl").read_text().splitlines()]
    queries = [e for e in entries if e.get("kind") == "query"]
    assert len(queries) == 1 and queries[0]["bytes"] == 0 and queries[0]["array_keys"] == []
    return queries[0]["metrics"]


def test_a_federation_ends_with_an_interval_fitted_from_the_sites_counts(federated, capsys) -> None:
    from client.__main__ import main as client_main
    from core.checkpoint import load_checkpoint
    from core.data import SiteDataConfig, load_site

    root, sites = federated
    final = load_checkpoint(root / "plain" / "federated_final.pt").metadata
    splits = [load_site(SiteDataConfig(site), 48, None, seed=0, splits=("val", "test")) for site in sites]
    conformal, how = final["conformal"], final["conformal_federated"]
    assert conformal["n"] == sum(len(s.val) for s in splits) and conformal["source"] == "2 sites"
    assert conformal["halfwidth_months"] % BIN_MONTHS == 0 and conformal["halfwidth_months_sex_from_head"]
    assert how["sites"] == 2 and how["private_sites"] == 0 and how["refused"] == {}
    assert how["test_images"] == sum(len(s.test) for s in splits) and 0 <= how["pooled_test_coverage"] <= 1
    for index, (site, split) in enumerate(zip(sites, splits)):
        figures = how["per_site"][str(index)]
        assert figures["calibration_images"] == len(split.val) and figures["test_images"] == len(split.test)
        released = _audited_counts(root / "plain" / "state" / site.name)
        for key in ("calibration-given", "calibration-head", "test-given", "test-head"):
            assert len(released[key]) == 121 and all(float(c).is_integer() for c in released[key])
        assert sum(released["calibration-given"]) == len(split.val) and released["noise-sigma"] == 0
    image = next((sites[0] / "images").iterdir())
    code = client_main(["predict", "--model", str(root / "plain" / "federated_final.pt"), "--sex", "F", "--json",
                        "--no-progress", str(image)])
    row = __import__("json").loads(capsys.readouterr().out)
    assert code == 0 and row["interval_coverage"] == 0.9 and row["interval_high_months"] > row["bone_age_months"]


def test_private_sites_release_noisy_counts_accounted_in_their_ledgers(federated) -> None:
    from core.checkpoint import load_checkpoint

    root, sites = federated
    how = load_checkpoint(root / "private" / "federated_final.pt").metadata["conformal_federated"]
    assert how["private_sites"] == 2 and all(s["noise_sigma"] == 5.0 for s in how["per_site"].values())
    for site in sites:
        state = root / "private" / "state" / site.name
        released = _audited_counts(state)
        assert released["noise-sigma"] == 5.0 and not all(float(c).is_integer() for c in released["test-given"])
        entries = PrivacyLedger(state / "privacy_ledger.jsonl").entries()
        assert entries[-1].context["release"] == "interval score counts" and entries[-1].sample_rate == 1.0
        assert released["epsilon"] > 0 and 0 < released["delta"] < 1
