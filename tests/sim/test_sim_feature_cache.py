"""`python -m sim --no-feature-cache` reaches the simulated sites' node configs and the baselines."""

from pathlib import Path

import sim.run
from core.train.feature_cache import FeatureCache
from sim.__main__ import main
from sim.baselines import feature_cache_of
from sim.experiment import federation_runs
from sim.sites import PreparedSite


def _config(monkeypatch, tmp_path: Path, *flags: str):
    seen = []
    monkeypatch.setattr(sim.run, "run_experiment", seen.append)
    assert main(["--preset", "smoke", "--out", str(tmp_path / "o"), "--cache", str(tmp_path / "c"), *flags]) == 0
    return seen[0]


def test_the_feature_cache_is_on_by_default_and_the_flag_turns_it_off_everywhere(monkeypatch, tmp_path):
    sites = [PreparedSite("0-tongji", tmp_path / "tongji", "months")]
    for flags, on in (((), True), (("--no-feature-cache",), False)):
        config = _config(monkeypatch, tmp_path, *flags)
        assert config.feature_cache is on
        assert isinstance(feature_cache_of(config), FeatureCache) is on  # site alone, pooled, federated then local
        runs = federation_runs(config, sites, tmp_path / "pretrained.pt")
        assert runs and all(node["feature-cache"] is on for run in runs for node in run.sites)
