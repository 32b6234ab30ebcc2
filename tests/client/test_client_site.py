"""One site's message handling without the engine: what it trains, what it returns, what it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from flwr.app import RecordDict

from client.config import SiteConfig
from client.site import TRAIN_METRICS, SiteSession, evaluate_metric_keys
from core.checkpoint import CheckpointError, file_sha256, load_checkpoint
from core.errors import ConfigError
from core.stages.local_layers import load_local_layers
from core.model.groups import block_of_key, norm_layer_keys, parameter_groups


@pytest.fixture(scope="module")
def site(tmp_path_factory, tiny_federation) -> tuple[SiteConfig, Path]:
    root = tmp_path_factory.mktemp("site")
    tiny = tiny_federation(root, 24)
    node = tiny.nodes(root / "state")[0]
    return SiteConfig.from_node_config(node), tiny.pretrained


def _state(pretrained: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(pretrained).model.state_dict()


def test_a_site_refuses_a_pretrained_model_whose_sha256_differs(site) -> None:
    config, pretrained = site
    arrays = _state(pretrained)
    SiteSession(config, arrays, {"pretrained-sha256": file_sha256(pretrained)}, RecordDict())  # the right one
    with pytest.raises(CheckpointError, match="SHA-256 differs"):
        SiteSession(config, arrays, {"pretrained-sha256": "0" * 64}, RecordDict())


def test_the_whole_model_sent_without_a_freeze_key_comes_back_whole_and_trained(site) -> None:
    config, pretrained = site
    before = _state(pretrained)
    arrays, metrics = SiteSession(config, dict(before), {"batch-size": 8}, RecordDict()).train()
    assert list(arrays) == list(before)  # all 137-odd arrays, not blocks 4-6 only
    assert any(not torch.equal(before[k], arrays[k]) for k in before if block_of_key(k) == 1)
    assert metrics["frozen-depth"] == 0 and all(metrics[f"frozen-block-{b}"] == 0.0 for b in range(1, 7))
    assert set(metrics) == set(TRAIN_METRICS)


def test_a_site_trains_what_it_was_sent_plus_its_own_deeper_freeze(site) -> None:
    config, pretrained = site
    before = _state(pretrained)
    sent = {k: before[k] for k in parameter_groups(load_checkpoint(pretrained).model, (1, 2)).shared}
    deeper = SiteConfig(**{**config.__dict__, "freeze": (1, 2, 3, 4)})
    arrays, metrics = SiteSession(deeper, sent, {"batch-size": 8, "freeze": "none"}, RecordDict()).train()
    assert {block_of_key(k) for k in arrays} == {5, 6}
    assert metrics["frozen-depth"] == 4 and metrics["frozen-block-3"] == 1.0 and metrics["frozen-block-5"] == 0.0


def test_evaluation_keys_are_fixed_and_small_age_groups_are_suppressed(site) -> None:
    config, pretrained = site
    _, shown = SiteSession(SiteConfig(**{**config.__dict__, "min_group_images": 1}), _state(pretrained), {},
                           RecordDict()).evaluate()
    _, hidden = SiteSession(SiteConfig(**{**config.__dict__, "min_group_images": 10_000}), _state(pretrained), {},
                            RecordDict()).evaluate()
    assert tuple(shown) == tuple(hidden) == evaluate_metric_keys()
    counts = {k: v for k, v in shown.items() if k.startswith("n-")}
    assert sum(counts.values()) == shown["num-examples"] > 0
    assert all(v == 0 for k, v in hidden.items() if k.startswith(("n-", "mad-")) and k != "mad-months")


def test_a_site_sent_one_block_trains_only_that_block_and_one_sent_nothing_refuses(site) -> None:
    config, pretrained = site
    before = _state(pretrained)
    block4 = {k: v for k, v in before.items() if block_of_key(k) == 4}
    arrays, metrics = SiteSession(config, block4, {"batch-size": 8}, RecordDict()).train()
    assert set(arrays) == set(block4) and metrics["frozen-block-6"] == 1.0 and metrics["frozen-block-4"] == 0.0
    with pytest.raises(ConfigError, match="nothing to train"):
        SiteSession(config, {}, {}, RecordDict()).train()


def test_fedbn_layers_outlive_a_supernode_restart_of_the_same_run_only(site, tmp_path) -> None:
    config, pretrained = site
    config = SiteConfig(**{**config.__dict__, "state_dir": tmp_path / "state"})
    before = _state(pretrained)
    groups = parameter_groups(load_checkpoint(pretrained).model, (1, 2, 3), "norm")
    sent = {k: before[k] for k in groups.shared}
    server = {"batch-size": 8, "freeze": "1-3", "local-layers": "norm", "server-round": 1}
    arrays, _ = SiteSession(config, sent, server, RecordDict(), run_id=7).train()
    assert arrays and not set(arrays) & set(groups.local)
    kept = load_local_layers(config.state_dir)
    assert (kept.run_id, kept.round, kept.pretrained_sha256) == (7, 1, file_sha256(pretrained))
    assert set(kept.layers) == set(groups.local) and any(not torch.equal(kept.layers[k], before[k]) for k in kept.layers)
    # a restarted SuperNode has an empty node state: the same run takes the kept layers, another run the pretrained ones
    restarted = SiteSession(config, sent, {**server, "server-round": 2}, RecordDict(), run_id=7).model.state_dict()
    other = SiteSession(config, sent, server, RecordDict(), run_id=8).model.state_dict()
    assert all(torch.equal(restarted[k], kept.layers[k]) for k in groups.local)
    assert all(torch.equal(other[k], before[k]) for k in groups.local)


def test_a_fedbn_site_never_returns_its_normalisation_layers_even_when_sent_them(site, tmp_path) -> None:
    config, pretrained = site
    config = SiteConfig(**{**config.__dict__, "state_dir": tmp_path / "state"})
    before = _state(pretrained)
    norms = set(norm_layer_keys(load_checkpoint(pretrained).model))
    arrays, _ = SiteSession(config, dict(before), {"batch-size": 8, "local-layers": "norm", "server-round": 1},
                            RecordDict()).train()
    assert arrays and not set(arrays) & norms  # kept at the site, never aggregated
    assert set(arrays) == set(before) - norms


def test_a_site_trains_on_cached_frozen_features_unless_its_node_config_says_no(site, monkeypatch) -> None:
    import client.site
    from core.train.feature_cache import FeatureCache

    config, pretrained = site
    sent = {k: v for k, v in _state(pretrained).items() if block_of_key(k) >= 4}
    cache = FeatureCache()
    monkeypatch.setitem(client.site.FEATURES, "images", cache)
    SiteSession(config, dict(sent), {"batch-size": 8, "server-round": 1}, RecordDict()).train()
    SiteSession(config, dict(sent), {"batch-size": 8, "server-round": 2}, RecordDict()).train()
    assert (cache.misses, cache.hits) == (1, 1)  # the second round reused the first round's features
    off = SiteConfig(**{**config.__dict__, "feature_cache": False})
    SiteSession(off, dict(sent), {"batch-size": 8, "server-round": 3}, RecordDict()).train()
    assert (cache.misses, cache.hits) == (1, 1)


def test_a_site_whose_node_config_says_feature_augment_features_trains_on_augmented_feature_maps(
        site, monkeypatch) -> None:
    import client.site
    from core.train.feature_cache import FeatureCache

    config, pretrained = site
    caches = {where: FeatureCache(augment_where=where) for where in ("images", "features")}
    monkeypatch.setattr(client.site, "FEATURES", caches)
    sent = {k: v for k, v in _state(pretrained).items() if block_of_key(k) >= 4}
    for where in ("features", "images"):
        node = {**config.node_config(), "feature-augment": where}  # the key as a SuperNode reads it
        SiteSession(SiteConfig.from_node_config(node), dict(sent), {"batch-size": 8, "server-round": 1},
                    RecordDict()).train()
        keys = list(caches[where]._entries)
        assert keys and [key.in_features for key in keys] == [where == "features"], where
    # each mode trained from its own cache: one split's features each, none in the other's
    assert (caches["features"].misses, caches["images"].misses) == (1, 1)


def test_fedrep_trains_the_kept_head_first_then_the_shared_blocks_and_returns_only_those(site, tmp_path,
                                                                                           monkeypatch) -> None:
    import client.site as site_module

    config, pretrained = site
    config = SiteConfig(**{**config.__dict__, "state_dir": tmp_path / "state"})
    before = _state(pretrained)
    groups = parameter_groups(load_checkpoint(pretrained).model, (1, 2, 3), "head")
    assert {block_of_key(k) for k in groups.local} == {6} and {block_of_key(k) for k in groups.shared} == {4, 5}
    sent = {k: before[k] for k in groups.shared}  # the server never sends the head
    calls: list[tuple[int, ...]] = []
    real = site_module.train_site_round

    def recorded(model, train, val, settings, *args, **kwargs):
        calls.append(settings.freeze)
        return real(model, train, val, settings, *args, **kwargs)

    monkeypatch.setattr(site_module, "train_site_round", recorded)
    server = {"batch-size": 8, "freeze": "1-3", "local-layers": "head", "server-round": 1}
    state = RecordDict()
    arrays, metrics = SiteSession(config, sent, server, state, run_id=3).train()
    assert calls == [(1, 2, 3, 4, 5), (1, 2, 3, 6)]  # the head with the body fixed, then the body with the head fixed
    assert set(arrays) == set(groups.shared) and metrics["frozen-block-6"] == 0.0
    assert any(not torch.equal(arrays[k], before[k]) for k in arrays)
    kept = load_local_layers(config.state_dir)
    assert set(kept.layers) == set(groups.local) and any(not torch.equal(kept.layers[k], before[k]) for k in kept.layers)
    # the next round starts from the site's own head, not the pretrained one
    again = SiteSession(config, sent, {**server, "server-round": 2}, state, run_id=3).model.state_dict()
    assert all(torch.equal(again[k], kept.layers[k]) for k in groups.local)


def test_fedbn_layers_survive_a_server_side_resume_of_the_same_federation_only(site, tmp_path) -> None:
    config, pretrained = site
    config = SiteConfig(**{**config.__dict__, "state_dir": tmp_path / "state"})
    before = _state(pretrained)
    groups = parameter_groups(load_checkpoint(pretrained).model, (1, 2, 3), "norm")
    sent = {k: before[k] for k in groups.shared}
    server = {"batch-size": 8, "freeze": "1-3", "local-layers": "norm", "server-round": 1, "federation-id": "f1"}
    SiteSession(config, sent, server, RecordDict(), run_id=7).train()
    kept = load_local_layers(config.state_dir)
    assert kept.federation_id == "f1"
    # the server resumed the federation: a new Flower run, the same federation id
    resumed = SiteSession(config, sent, {**server, "server-round": 2}, RecordDict(), run_id=9).model.state_dict()
    other = SiteSession(config, sent, {**server, "federation-id": "f2"}, RecordDict(), run_id=9).model.state_dict()
    assert all(torch.equal(resumed[k], kept.layers[k]) for k in groups.local)
    assert all(torch.equal(other[k], before[k]) for k in groups.local)


def test_a_calibrating_site_reports_its_calibrated_test_metrics_and_keeps_its_line(site, tmp_path: Path) -> None:
    from core.predict.calibration import fit_sex_calibration
    from core.data import load_site, make_loader
    from core.stages.local_layers import load_site_calibration
    from core.stats.metrics import Predictions, compute_metrics
    from core.train.training import predict

    config, pretrained = site
    calibrating = SiteConfig(**{**config.__dict__, "calibrate": True, "state_dir": tmp_path})
    _, raw = SiteSession(config, _state(pretrained), {"server-round": 3}, RecordDict()).evaluate()
    _, reply = SiteSession(calibrating, _state(pretrained), {"server-round": 3}, RecordDict()).evaluate()
    model = load_checkpoint(pretrained).model
    data = load_site(config.data, model.config.image_size, None, seed=0, splits=("train", "test"))
    train, test = (predict(model, make_loader(d, 64, shuffle=False, seed=0), torch.device("cpu"))
                   for d in (data.train, data.test))
    line = fit_sex_calibration(train.predicted_months, train.true_months, train.male)
    expected = compute_metrics(Predictions(line.apply(test.predicted_months, test.male), test.true_months, test.male))
    assert tuple(reply) == evaluate_metric_keys()
    assert reply["mad-months"] == pytest.approx(expected["mad_months"], abs=1e-3)
    assert abs(reply["mad-months"] - raw["mad-months"]) > 0.1  # an untrained model's scale is far off: the line moves it
    kept = load_site_calibration(tmp_path)
    assert kept is not None and kept.round == 3 and kept.n_train == len(data.train)
    assert kept.line.boys.slope == pytest.approx(line.boys.slope, rel=1e-4)


def test_a_site_scores_calibrates_and_counts_with_the_tta_its_pretrained_model_records(site, tmp_path: Path,
                                                                                     monkeypatch) -> None:
    import client.site_interval as site_interval
    from core.checkpoint import save_checkpoint
    from core.data import load_site, make_loader
    from core.intervals.conformal import predictions_of
    from core.intervals.federated_conformal import BIN_MONTHS, score_counts
    from core.predict.calibration import fit_sex_calibration
    from core.predict.tta import TTAConfig
    from core.stages.local_layers import load_site_calibration
    from core.train.evaluation import evaluate_model
    from core.train.training import predict

    config, pretrained = site
    parent, tta, cpu = load_checkpoint(pretrained), TTAConfig(shift=0.04, scale=0.05), torch.device("cpu")
    recorded = save_checkpoint(tmp_path / "tta.pt", parent.model, {**parent.metadata, "tta": tta.to_dict()})
    with_tta = SiteConfig(**{**config.__dict__, "pretrained": recorded, "state_dir": tmp_path / "state"})
    data = load_site(config.data, parent.model.config.image_size, None, seed=0, splits=("train", "val", "test"))
    _, reply = SiteSession(with_tta, _state(pretrained), {}, RecordDict()).evaluate()
    expected, one_pass = (evaluate_model(parent.model, data.test, cpu, config.data.label_unit, tta=t)["mad_months"]
                          for t in (tta, None))
    assert reply["mad-months"] == pytest.approx(expected, abs=1e-3) and abs(expected - one_pass) > 1e-3
    scored_with = []  # the interval's scores: an untrained model's errors barely move between 0.5-month bins
    monkeypatch.setattr(site_interval, "predictions_of", lambda *a, tta=None, **k: scored_with.append(tta) or
                        predictions_of(*a, tta=tta, **k))
    _, counts = site_interval.interval_counts(SiteSession(with_tta, _state(pretrained), {}, RecordDict()))
    predicted, true = predictions_of(parent.model, data.test, cpu, tta=tta)
    assert counts["test-given"] == [float(c) for c in score_counts(abs(true - predicted), BIN_MONTHS)]
    assert scored_with and set(scored_with) == {tta}
    calibrating = SiteConfig(**{**with_tta.__dict__, "calibrate": True})
    SiteSession(calibrating, _state(pretrained), {"server-round": 1}, RecordDict()).evaluate()
    train = predict(parent.model, make_loader(data.train, 64, shuffle=False, seed=0), cpu, tta=tta)
    line = fit_sex_calibration(train.predicted_months, train.true_months, train.male)
    kept = load_site_calibration(tmp_path / "state")
    assert kept is not None and kept.line.boys.slope == pytest.approx(line.boys.slope, rel=1e-4)
