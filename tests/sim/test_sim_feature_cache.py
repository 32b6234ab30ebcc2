"""`python -m sim --no-feature-cache` and `--feature-augment` reach the simulated sites' node configs and training,
and the baselines' training."""

from dataclasses import replace
from pathlib import Path

import pytest

import sim.run
from core.errors import ConfigError
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


def _federation_site_trains_with(node: dict, pretrained: Path, monkeypatch) -> list[bool]:
    """The simulated site's ClientApp trains one round from `node`; which modes' caches it filled (in_features)."""
    import client.site
    from client.config import SiteConfig
    from client.site import SiteSession
    from flwr.app import RecordDict

    from core.checkpoint import load_checkpoint
    from core.model.groups import block_of_key

    caches = {where: FeatureCache(augment_where=where) for where in ("images", "features")}
    monkeypatch.setattr(client.site, "FEATURES", caches)
    sent = {k: v for k, v in load_checkpoint(pretrained).model.state_dict().items() if block_of_key(k) >= 4}
    SiteSession(SiteConfig.from_node_config(node), sent, {"batch-size": 8, "server-round": 1}, RecordDict()).train()
    return [key.in_features for cache in caches.values() for key in cache._entries]


def test_feature_augment_from_an_experiment_file_reaches_the_federated_sites_and_baselines_training(
        monkeypatch, tmp_path, tiny_federation):
    import sim.baselines
    from sim.baselines import federated_then_local, run_baselines
    from sim.experiment import load_test_splits

    tiny = tiny_federation(tmp_path / "tiny", 24)
    sites = [PreparedSite(f"{k}-{path.name}", path, "months") for k, path in enumerate(tiny.sites)]
    tests = load_test_splits(sites, 48)
    (tmp_path / "exp.toml").write_text('feature_augment = "features"\n')
    trained_with: list[str] = []  # the mode of the cache each baseline's local round got

    def recorded(model, train, val, settings, device, round_number, *args, features=None, **kwargs):
        trained_with.append(features.augment_where)  # the baselines' training, not run: its cache is what counts

    monkeypatch.setattr(sim.baselines, "train_site_round", recorded)
    default = _config(monkeypatch, tmp_path)
    assert default.feature_augment == "images" and feature_cache_of(default).augment_where == "images"
    # an experiment file's key (the flag sets the same field: tests/sim/test_sim_schema.py) down to each training
    config = replace(_config(monkeypatch, tmp_path, "--experiment", str(tmp_path / "exp.toml")), image_size=48,
                     freeze_specs=("1-3",), device="cpu", rounds=1)
    assert config.feature_augment == "features"
    run_baselines(config, sites, tiny.pretrained, tests)  # each site alone, all pooled
    federated_then_local(config, sites, tiny.pretrained, "1-3", tests)
    assert trained_with == ["features"] * (len(sites) + 1 + len(sites))
    node = federation_runs(config, sites[:1], tiny.pretrained)[0].sites[0]  # a federated site's node config
    assert node["feature-augment"] == "features"
    assert _federation_site_trains_with(node, tiny.pretrained, monkeypatch) == [True]  # one split, maps augmented


def test_a_bad_feature_augment_is_refused_in_one_line(tmp_path, capsys):
    from sim.config import load_experiment

    assert main(["--out", str(tmp_path / "o"), "--feature-augment", "pixels"]) == 2
    assert "--feature-augment must be one of images, features, got 'pixels'" in capsys.readouterr().err
    (tmp_path / "bad.toml").write_text('feature_augment = "pixels"\n')
    with pytest.raises(ConfigError, match="bad.toml: feature_augment must be one of images, features, got 'pixels'"):
        load_experiment(tmp_path / "bad.toml")
