"""The federated prediction interval from binned score counts (`core.intervals.federated_conformal`); the end-to-end run is in
tests/server/test_server_federation.py."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from core.intervals.conformal import ConformalError, conformal_quantile
from core.intervals.federated_conformal import (BIN_MONTHS, PRIVATE_BIN_MONTHS, SiteCounts, account_release, add_noise,
                                                coverage_from_counts, fit_federated, halfwidth_from_counts,
                                                noise_multiplier, score_counts)
from core.privacy import BudgetExceeded, DPConfig, PrivacyLedger

PRIVATE = {"dp-noise-multiplier": 1.0, "dp-seed": 3, "dp-max-epsilon": 100.0}


def test_the_binned_quantile_is_the_exact_one_rounded_up_to_its_bin_edge() -> None:
    rng = np.random.default_rng(0)
    for width in (BIN_MONTHS, PRIVATE_BIN_MONTHS):
        for n in (*range(9, 60), 200, 1000):
            scores = np.abs(rng.normal(0, 25, n))
            exact = conformal_quantile(scores, 0.9)
            counts = score_counts(scores, width)
            binned = halfwidth_from_counts(counts, 0.9)
            assert binned == (np.floor(exact / width) + 1) * width  # the upper edge of the exact one's bin
            covered, counted = coverage_from_counts(counts, binned)
            assert counted == n and covered == np.mean(scores < binned)
    with pytest.raises(ConformalError, match="at least 9"):
        halfwidth_from_counts(score_counts(np.arange(8.0)), 0.9)


@pytest.mark.parametrize("n, rank", [(9, 9), (10, 10), (19, 18), (20, 19), (29, 27), (99, 90), (100, 91)])
def test_the_half_width_is_the_bin_of_the_split_conformal_rank_ceil_n_plus_1_times_coverage(n: int, rank: int) -> None:
    scores = np.arange(n) + 0.25  # one score per 0.5-month bin, the k-th smallest in the bin [k - 1, k - 0.5)
    assert halfwidth_from_counts(score_counts(scores), 0.9) == rank - 0.5
    assert halfwidth_from_counts(score_counts(np.arange(n) * 2 + 0.5, PRIVATE_BIN_MONTHS), 0.9) == 2 * rank


def test_sites_without_dp_release_fine_bins_and_a_private_site_sets_the_coarse_grid() -> None:
    rng = np.random.default_rng(3)
    one, two = np.abs(rng.normal(0, 20, 400)), np.abs(rng.normal(0, 30, 300))
    exact = conformal_quantile(np.concatenate([one[:200], two[:150]]), 0.9)
    open_sites = [SiteCounts("1", score_counts(one[:200]), score_counts(one[200:])),
                  SiteCounts("2", score_counts(two[:150]), score_counts(two[150:]))]
    interval, summary = fit_federated(open_sites)
    assert exact <= interval.halfwidth_months < exact + BIN_MONTHS and summary["bin_months"] == BIN_MONTHS
    assert "0.5-month bins" in interval.method and len(score_counts(one)) == 481
    private = SiteCounts("2", score_counts(two[:150], PRIVATE_BIN_MONTHS), score_counts(two[150:], PRIVATE_BIN_MONTHS),
                         sigma=1e-9)
    mixed, summary = fit_federated([open_sites[0], private])
    assert mixed.halfwidth_months == (np.floor(exact / PRIVATE_BIN_MONTHS) + 1) * PRIVATE_BIN_MONTHS
    assert summary["bin_months"] == PRIVATE_BIN_MONTHS and mixed.n == 350
    assert summary["per_site"]["1"]["test_images"] == 200  # the open site's counts summed into the coarse bins
    assert summary["per_site"]["1"]["pooled_test_coverage"] == np.mean(one[200:] < mixed.halfwidth_months)
    assert summary["per_site"]["1"]["own_halfwidth_months"] % BIN_MONTHS == 0  # its own interval on its own bins
    assert summary["per_site"]["1"]["own_halfwidth_months"] == halfwidth_from_counts(score_counts(one[:200]), 0.9)
    with pytest.raises(ConformalError, match="a site releases 481 .* or 121"):
        fit_federated([SiteCounts("3", np.ones(60), np.ones(60))])


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


def test_noisy_counts_only_widen_the_interval_and_the_summary_says_when_noise_sets_it() -> None:
    rng = np.random.default_rng(2)

    def fitted(n: int, sigma: float) -> tuple[float, float, dict]:
        scores = [np.abs(rng.normal(0, 30, n)) for _ in range(2)]
        noisy = [add_noise(score_counts(x, PRIVATE_BIN_MONTHS), sigma, rng) for x in scores]
        interval, summary = fit_federated([SiteCounts(str(i), c, c, sigma=sigma) for i, c in enumerate(noisy)])
        return interval.halfwidth_months, conformal_quantile(np.concatenate(scores), 0.9), summary

    small, exact, summary = fitted(30, 5.0)  # 60 images: the noise adds ~340 counts over the bins
    assert summary["noise_dominated"] and summary["noise_counts_added"] == pytest.approx(341, abs=1)
    assert small > exact + 100  # conservative, and useless: the guard says so
    large, exact, summary = fitted(5000, 1.0)
    assert not summary["noise_dominated"] and exact <= large <= exact + 4
    assert abs(summary["calibration_images"] - 10000) < 100  # unclipped sum: unbiased
    assert not fit_federated([SiteCounts("0", score_counts(np.arange(60.0)), score_counts(np.arange(9.0)))])[1][
        "noise_dominated"]


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


ENGINE_IMAGES = 100


def engine_runs(root: Path, tiny) -> list:
    """This module's federations on `tiny` (tests/conftest.py's TinySites), in order; they run in the suite's one
    engine session (`engine_session`)."""
    from client.config import state_folder_name
    from core.round_settings import RoundSettings
    from server.config import FederationConfig
    from sim.config import RealSite
    from sim.federation import SimulatedRun, site_node_config
    from sim.interval import refit_run

    settings = RoundSettings(num_rounds=1, freeze=(1, 2, 3, 4), batch_size=8)
    runs = [SimulatedRun(FederationConfig(pretrained=tiny.pretrained, settings=settings, out_dir=root / name,
                                          min_nodes=2, device="cpu"), tiny.nodes(root / name / "state", **extra))
            for name, extra in (("plain", {}), ("private", PRIVATE))]
    # FedBN (block 4 trains: its BatchNorm layers stay at the sites) with private sites, their state where
    # `python -m sim` keeps it (for `sim interval`)
    fedbn = root / "fedbn"
    runs.append(SimulatedRun(
        FederationConfig(pretrained=tiny.pretrained, settings=replace(settings, local_layers="norm", freeze=(1, 2, 3)),
                         out_dir=fedbn, min_nodes=2, device="cpu"),
        tuple(site_node_config(path, i, fedbn / "site-state" / state_folder_name(path), tiny.pretrained, **PRIVATE)
              for i, path in enumerate(tiny.sites))))
    # then, in the same engine session, only the interval of FedBN's final model (`python -m sim interval`)
    runs.append(refit_run(fedbn / "federated_final.pt", tiny.pretrained, [RealSite(p) for p in tiny.sites],
                          device="cpu", private=PRIVATE))
    return runs


@pytest.fixture(scope="module")
def federated(engine_result) -> tuple[Path, tuple[Path, ...]]:
    return engine_result.root, engine_result.tiny.sites


def _queries(state: Path) -> list[dict]:
    entries = [json.loads(line) for line in (state / "audit.jsonl").read_text().splitlines()]
    return [e for e in entries if e.get("kind") == "query"]


def _audited_counts(state: Path) -> dict:
    queries = _queries(state)
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
    assert how["bin_months"] == BIN_MONTHS  # no private site: the fine bins
    assert how["sites"] == 2 and how["private_sites"] == 0 and how["refused"] == {}
    assert how["test_images"] == sum(len(s.test) for s in splits) and 0 <= how["pooled_test_coverage"] <= 1
    for index, (site, split) in enumerate(zip(sites, splits)):
        figures = how["per_site"][str(index)]
        assert figures["calibration_images"] == len(split.val) and figures["test_images"] == len(split.test)
        released = _audited_counts(root / "plain" / "state" / site.name)
        for key in ("calibration-given", "calibration-head", "test-given", "test-head"):
            assert len(released[key]) == 481 and all(float(c).is_integer() for c in released[key])
        assert sum(released["calibration-given"]) == len(split.val) and released["noise-sigma"] == 0
    image = next((sites[0] / "images").iterdir())
    code = client_main(["predict", "--model", str(root / "plain" / "federated_final.pt"), "--sex", "F", "--json",
                        "--no-progress", str(image)])
    row = json.loads(capsys.readouterr().out)
    assert code == 0 and row["interval_coverage"] == 0.9 and row["interval_high_months"] > row["bone_age_months"]


def test_private_sites_release_noisy_counts_accounted_in_their_ledgers(federated) -> None:
    from core.checkpoint import load_checkpoint

    root, sites = federated
    how = load_checkpoint(root / "private" / "federated_final.pt").metadata["conformal_federated"]
    assert how["private_sites"] == 2 and all(s["noise_sigma"] == 5.0 for s in how["per_site"].values())
    assert how["bin_months"] == PRIVATE_BIN_MONTHS
    for site in sites:
        state = root / "private" / "state" / site.name
        released = _audited_counts(state)
        assert released["noise-sigma"] == 5.0 and not all(float(c).is_integer() for c in released["test-given"])
        assert len(released["test-given"]) == 121  # 2-month bins: fewer bins, fewer noise counts
        entries = PrivacyLedger(state / "privacy_ledger.jsonl").entries()
        assert entries[-1].context["release"] == "interval score counts" and entries[-1].sample_rate == 1.0
        assert released["epsilon"] > 0 and 0 < released["delta"] < 1


def _sim(*argv: str) -> int:
    from sim.__main__ import main as sim_main

    return sim_main(["interval", *argv, "--device", "cpu"])


def test_a_federated_model_is_refitted_as_the_run_left_it_without_being_touched(federated) -> None:
    from core.checkpoint import file_sha256, load_checkpoint
    from sim.interval import summary_lines

    root, sites = federated
    source, refit = root / "fedbn" / "federated_final.pt", root / "fedbn" / "interval" / "federated_final.pt"
    old, new = load_checkpoint(source), load_checkpoint(refit)
    assert new.metadata["interval_from"] == {"path": str(source), "sha256": file_sha256(source)}
    assert all(torch.equal(v, new.model.state_dict()[k]) for k, v in old.model.state_dict().items())
    for folder in (root / "fedbn" / "site-state").iterdir():  # the same release again: each site's own layers
        first, second = _queries(folder)
        for key in ("calibration-given", "test-given", "calibration-head", "test-head"):
            assert second["metrics"][key] == first["metrics"][key]
        kept = [json.loads(line) for line in (folder / "own_intervals.jsonl").read_text().splitlines()]
        assert len(kept) == 2 and kept[0]["interval"] == kept[1]["interval"]  # exact scores: the very same model
        releases = [e for e in PrivacyLedger(folder / "privacy_ledger.jsonl").entries()
                    if e.context.get("release") == "interval score counts"]
        assert len(releases) == 2  # each release accounted
    assert new.metadata["conformal"] == old.metadata["conformal"]
    assert new.metadata["conformal_federated"]["private_sites"] == 2
    lines = summary_lines(refit, new.metadata, [s.name for s in sites])
    assert "interval +-" in lines[0] and "2 private" in lines[0] and "(sd 78)" in lines[0]
    assert lines[1].startswith("warning: the privacy noise") and len(lines) == 2  # ~20 images: no coverage read
    plain = load_checkpoint(root / "plain" / "federated_final.pt").metadata
    lines = summary_lines(refit, plain, [s.name for s in sites])
    assert lines[1].startswith("held-out coverage, all sites: ") and lines[2].strip().startswith(sites[0].name)


def test_sim_interval_refuses_what_is_not_a_federated_model_of_that_pretrained_one(federated, capsys) -> None:
    root, sites = federated
    final, pretrained = root / "plain" / "federated_final.pt", root / "pretrained.pt"
    site = ("--site", str(sites[0]))
    cases = [(("--model", str(pretrained), "--pretrained", str(pretrained)), "is not a federation's final model"),
             (("--model", str(final), "--pretrained", str(final)), "was not federated from"),
             (("--model", str(final), "--pretrained", str(pretrained), "--out", str(final.parent)), "would overwrite")]
    for argv, message in cases:
        assert _sim(*argv, *site) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1


def test_the_refit_asks_the_sites_under_the_run_s_own_id_round_and_settings(federated) -> None:
    from core.checkpoint import load_checkpoint
    from server.config import FederationConfig
    from server.interval import IntervalRefit

    root, _ = federated
    source = root / "fedbn" / "federated_final.pt"
    config = FederationConfig(pretrained=root / "pretrained.pt", out_dir=root / "elsewhere", interval_from=source)
    sent = IntervalRefit.of(config, "federated_final.pt").site_config
    meta = load_checkpoint(source).metadata
    assert sent["federation-id"] == meta["federation_id"] and sent["server-round"] == meta["round"] == 1
    assert (sent["local-layers"], sent["freeze"]) == ("norm", "1-3")  # each site rebuilds its FedBN model


def test_the_run_config_names_the_model_to_refit() -> None:
    from server.config import FederationConfig

    assert FederationConfig.from_run_config({"pretrained": "p.pt", "interval-from": "f.pt"}).interval_from == Path("f.pt")
    assert FederationConfig.from_run_config({"pretrained": "p.pt", "interval-from": ""}).interval_from is None


def test_predict_uses_the_interval_the_site_kept_when_asked(federated, capsys) -> None:
    from client.__main__ import main as client_main
    from core.checkpoint import load_checkpoint
    from core.intervals.conformal import interval_bounds, max_months

    root, sites = federated
    state = root / "plain" / "state" / sites[0].name
    kept = json.loads((state / "own_intervals.jsonl").read_text().splitlines()[-1])
    assert kept["interval"]["n"] == sum(_audited_counts(state)["calibration-given"])  # the same validation images
    image = next((sites[0] / "images").iterdir())
    common = ["predict", "--sex", "F", "--json", "--no-progress", str(image)]
    assert client_main([*common, "--model", str(root / "plain" / "federated_final.pt"), "--interval", "site",
                        "--state-dir", str(state)]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["interval_source"].startswith("this site's own: ")
    model = load_checkpoint(root / "plain" / "federated_final.pt").model
    low, high = interval_bounds(row["bone_age_months"], kept["interval"]["halfwidth_months"], max_months(model))
    assert abs(row["interval_low_months"] - low) < 0.1 and abs(row["interval_high_months"] - high) < 0.1
    assert client_main([*common, "--model", str(root / "plain" / "federated_final.pt")]) == 0
    source = json.loads(capsys.readouterr().out)["interval_source"]
    assert source.startswith("the model's: ") and "privacy noise" not in source
    assert client_main([*common, "--model", str(root / "private" / "federated_final.pt")]) == 0
    assert "set by the sites' privacy noise" in json.loads(capsys.readouterr().out)["interval_source"]
    refusals = [(["--model", str(root / "plain" / "federated_final.pt"), "--interval", "site"], "--site-config or"),
                (["--model", str(root / "pretrained.pt"), "--interval", "site", "--state-dir", str(state)],
                 "kept no interval of its own for this model"),
                (["--model", str(root / "fedbn" / "federated_final.pt"), "--interval", "site", "--state-dir",
                  str(state)], "client export")]
    for argv, message in refusals:
        assert client_main([*common, *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
