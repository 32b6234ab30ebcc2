"""The ClientApp in-process: a Flower Message in, a reply out, on a 32 px TJ-Net (width 0.25) and 10 phantom
images (7 train, 1 val, 2 test by id). Each test takes well under a second, so that a mutation tester can run them
for every edit of `client/site.py`; `tests/client/test_client_site.py` trains larger sites end to end.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

import client.site as site_module
from client.app import REFUSED, evaluate, train
from client.config import SiteConfig
from client.site import LOCAL_LAYERS_KEY, TRAIN_METRICS, SiteSession, evaluate_metric_keys
from core.checkpoint import describe, file_sha256, load_checkpoint, save_checkpoint
from core.data import AugmentConfig, load_site, make_loader
from core.errors import ConfigError
from core.model.config import TJNetConfig
from core.model.freeze import FreezeSpec
from core.model.groups import block_of_key, norm_layer_keys
from core.model.tjnet import TJNet
from core.predict.calibration import fit_sex_calibration
from core.predict.tta import TTAConfig
from core.privacy.config import DPConfig
from core.stages.finetune import SiteRoundResult
from core.preprocess import PreprocessConfig
from core.stages.local_layers import LocalLayers, load_local_layers, load_site_calibration, save_local_layers
from core.train.evaluation import evaluate_model
from core.train.training import predict
from site_helpers import stub_training, subset  # tests/client/site_helpers.py

TRAIN_IDS, TEST_IDS = (1, 3, 4, 7, 8, 9, 10), (5, 6)  # id 2 is the validation split (core.data.split)


pytestmark = pytest.mark.usefixtures("flower_identity")  # Messages built outside a Flower process


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 10-image phantom site at 32 px and an untrained 32 px TJ-Net as the pretrained model."""
    from sim.phantom.writer import generate_site

    root = tmp_path_factory.mktemp("messages")
    data = generate_site("rsna", 10, root / "site", seed=1, image_size=32)
    torch.manual_seed(0)
    model = TJNet(TJNetConfig(image_size=32, width=0.25))
    return data, save_checkpoint(root / "pretrained.pt", model, describe(model))


def _node(site: tuple[Path, Path], state: Path, data: Path | None = None, **extra) -> dict:
    return {"data-path": str(data or site[0]), "pretrained": str(site[1]), "state-dir": str(state), "site-id": "3",
            "device": "cpu", "decode-cache": "none", **extra}


def _config(site: tuple[Path, Path], state: Path, **extra) -> SiteConfig:
    return SiteConfig.from_node_config(_node(site, state, **extra))


def _state(site: tuple[Path, Path], *blocks: int) -> dict[str, torch.Tensor]:
    state = load_checkpoint(site[1]).model.state_dict()
    return {k: v for k, v in state.items() if not blocks or block_of_key(k) in blocks}


def _message(kind: str, arrays: dict[str, torch.Tensor], **config) -> Message:
    content = RecordDict({"arrays": ArrayRecord(arrays),
                          "config": ConfigRecord({"server-round": 2, "batch-size": 4, **config})})
    return Message(content=content, dst_node_id=1, message_type=kind)


def test_a_train_message_returns_the_blocks_it_was_sent_trained_with_every_train_metric(site, tmp_path,
                                                                                        caplog) -> None:
    sent = _state(site, 4, 5, 6)
    with caplog.at_level(logging.INFO, logger="ossifl.client"):
        reply = train(_message("train", sent, freeze="1-3"), Context(1, 1, _node(site, tmp_path), RecordDict(), {}))
    assert not reply.has_error()
    arrays, metrics = reply.content["arrays"].to_torch_state_dict(), dict(reply.content["metrics"])
    assert list(arrays) == list(sent) and any(not torch.equal(arrays[k], sent[k]) for k in sent)
    assert set(metrics) == {*TRAIN_METRICS, "site-seconds"} and metrics["num-examples"] == len(TRAIN_IDS)
    assert metrics["frozen-depth"] == 3 and [metrics[f"frozen-block-{b}"] for b in range(1, 7)] == [1, 1, 1, 0, 0, 0]
    assert (metrics["private"], metrics["epsilon"], metrics["delta"], metrics["site-id"]) == (0, 0, 0, 3)
    assert min(metrics["train-loss"], metrics["train-mad-months"], metrics["val-mad-months"]) > 0
    assert 0 < metrics["train-seconds"] <= metrics["site-seconds"]
    assert (f"site 3 round 2: trained blocks [4, 5, 6] on {len(TRAIN_IDS)} images, val MAD "
            f"{metrics['val-mad-months']:.2f} months") in [r.getMessage() for r in caplog.records]


def test_the_site_trains_what_it_received_minus_its_own_freeze_and_reports_a_private_round(site, tmp_path,
                                                                                          monkeypatch, caplog) -> None:
    private = SiteRoundResult(7, train_loss=1.5, train_mad_months=2.5, val_mad_months=3.5, train_seconds=0.25,
                              epsilon=1.25, delta=1e-5)
    calls = stub_training(monkeypatch, private)
    model = load_checkpoint(site[1]).model  # the same model, trained on preprocessed images (not run here)
    preprocessed = save_checkpoint(tmp_path / "preprocessed.pt", model,
                                   describe(model, preprocess=PreprocessConfig(canonical=False).to_dict()))
    loads = []
    real_load = site_module.DECODED.load

    def recorded_load(data, size, augment, **options):
        loads.append((data, size, augment, options))
        return real_load(data, size, augment, **{**options, "preprocess": None})

    monkeypatch.setattr(site_module.DECODED, "load", recorded_load)
    config = replace(_config(site, tmp_path, freeze="1-4", pretrained=str(preprocessed)), feature_cache=False,
                     decode_cache=tmp_path / "decoded")
    server = {"freeze": "1-3", "central-dp": True, "server-round": 4, "seed": 9, "batch-size": 4}
    with caplog.at_level(logging.INFO, logger="ossifl.client"):
        session = SiteSession(config, _state(site, 4, 5, 6), server, RecordDict())
        arrays, metrics = session.train()
    (n_train, n_val, settings, device, round_number, args, kwargs, model), = calls
    assert model is session.model
    assert (n_train, n_val, settings.freeze, settings.seed, device, round_number) == (7, 1, (1, 2, 3, 4), 9,
                                                                                      torch.device("cpu"), 4)
    assert args == (config.dp, config.state_dir, "months", None) and kwargs == {}  # the node config: no feature cache
    assert loads == [(config.data, 32, AugmentConfig(), {"seed": 9, "splits": ("train", "val"),
                                                         "disk_dir": tmp_path / "decoded",
                                                         "preprocess": PreprocessConfig(canonical=False)})]
    assert {block_of_key(k) for k in arrays} == {5, 6}  # block 4 arrived but this site keeps it frozen
    assert metrics == {"num-examples": 1, "val-mad-months": 3.5, "train-seconds": 0.25, "private": 1.0,
                       "train-loss": 0.0, "train-mad-months": 0.0, "epsilon": 1.25, "delta": 1e-5, "frozen-depth": 4,
                       **{f"frozen-block-{b}": float(b <= 4) for b in range(1, 7)}, "site-id": 3}
    assert caplog.records[-1].getMessage() == ("site 3 round 4: trained blocks [5, 6] on 7 images, val MAD 3.50 "
                                               "months, epsilon 1.250")
    assert session.numeric_site_id == 3
    calls.clear()
    plain = replace(private, epsilon=None, delta=None)
    monkeypatch.setattr(site_module, "train_site_round", lambda *a, **kw: calls.append(a[6:]) or plain)
    named = SiteSession(_config(site, tmp_path, **{"site-id": "north", "feature-augment": "features"}),
                        _state(site, 5), {}, RecordDict())
    _, metrics = named.train()  # sent block 5 only: blocks 1-4 and 6 stay as they are
    assert calls == [(config.dp, config.state_dir, "months", site_module.FEATURES["features"])]  # its augment's cache
    assert named.numeric_site_id == -1
    assert (metrics["num-examples"], metrics["train-loss"], metrics["train-mad-months"]) == (7, 1.5, 2.5)
    assert (metrics["private"], metrics["epsilon"], metrics["delta"], metrics["site-id"]) == (0, 0, 0, -1)
    assert metrics["frozen-depth"] == 6 and metrics["frozen-block-6"] == 1.0 and metrics["frozen-block-5"] == 0.0
    with caplog.at_level(logging.INFO, logger="ossifl.client"):
        whole = SiteSession(_config(site, tmp_path), _state(site), {"freeze": "none"}, RecordDict()).train()[1]
    assert whole["frozen-depth"] == 0 and not any(whole[f"frozen-block-{b}"] for b in range(1, 7))  # all sent: none
    assert caplog.records[-1].getMessage().startswith("site 3 round 0: trained blocks [1, 2, 3, 4, 5, 6] on 7 images")


def test_a_fedbn_site_keeps_its_normalisation_layers_and_returns_the_rest(site, tmp_path, monkeypatch) -> None:
    stub_training(monkeypatch, SiteRoundResult(7, 1.0, 1.0, 1.0))
    sent = _state(site, 4, 5, 6)
    norms = set(norm_layer_keys(load_checkpoint(site[1]).model)) & set(sent)
    state = RecordDict()
    server = {"local-layers": "norm", "server-round": 5, "federation-id": "f3"}
    arrays, _ = SiteSession(_config(site, tmp_path), dict(sent), server, state, run_id=8).train()
    assert norms and set(arrays) == set(sent) - norms  # sent them, yet they never leave
    assert set(state.array_records[LOCAL_LAYERS_KEY]) == norms
    kept = load_local_layers(tmp_path)
    assert (set(kept.layers), kept.run_id, kept.round, kept.pretrained_sha256, kept.federation_id) == (
        norms, 8, 5, file_sha256(site[1]), "f3")


def test_an_evaluate_message_reports_the_test_split_and_hides_small_age_groups(site, tmp_path, monkeypatch) -> None:
    loads = []
    real_load = site_module.DECODED.load
    monkeypatch.setattr(site_module.DECODED, "load", lambda data, size, augment, **options: loads.append(
        (data, size, augment, options)) or real_load(data, size, augment, **options))
    model = load_checkpoint(site[1]).model
    test = load_site(_config(site, tmp_path).data, 32, None, seed=0, splits=("test",)).test
    expected = evaluate_model(model, test, torch.device("cpu"), "months")

    def reply(min_group_images: int) -> dict:
        loads.clear()
        answer = evaluate(_message("evaluate", _state(site)), Context(
            1, 1, _node(site, tmp_path, **{"min-group-images": min_group_images}), RecordDict(), {}))
        assert "arrays" not in answer.content  # evaluation sends no weights back
        assert [(augment, options["splits"]) for _, _, augment, options in loads] == [(None, ("test",))]
        return dict(answer.content["metrics"])

    shown = reply(1)
    assert tuple(shown) == (*evaluate_metric_keys(), "site-seconds")
    assert [shown[k] for k in ("num-examples", "mad-months", "rmse-months", "accuracy", "accuracy-1y", "bias-months")] \
        == pytest.approx([len(TEST_IDS), expected["mad_months"], expected["rmse_months"], expected["accuracy"],
                          expected["accuracy_1y"], expected["bias_months"]])
    groups = {k[2:]: v for k, v in shown.items() if k.startswith("n-") and v > 0}
    assert sum(groups.values()) == len(TEST_IDS) and shown["site-id"] == 3
    assert all(shown[f"mad-{g}"] == pytest.approx(expected["mad_by_age_group"][g]) for g in groups)
    largest = max(groups.values())
    at_limit, over = reply(largest), reply(largest + 1)
    assert sum(at_limit[f"n-{g}"] for g in groups) >= largest  # a group of exactly min-group-images is shown
    assert all(over[f"n-{g}"] == 0 and over[f"mad-{g}"] == 0 for g in groups)
    years = subset(site, TEST_IDS, tmp_path / "years", years=True)  # a Tongji-style site: whole years
    in_years = SiteSession(_config(site, tmp_path, **{"data-path": str(years), "label-unit": "years"}), _state(site),
                           {}, RecordDict())
    scored = []  # the label unit only changes `accuracy` (whole-year classes): the call must carry it
    monkeypatch.setattr(site_module, "evaluate_model",
                        lambda *a, **kw: scored.append(a[3:]) or evaluate_model(*a, **kw))
    assert in_years.evaluate()[1]["mad-months"] == pytest.approx(shown["mad-months"], rel=1e-4)
    assert scored == [("years",)]


@pytest.mark.parametrize("kind, ids, reason", [
    ("train", (2, 5, 6), "the training split has no usable images"),
    ("evaluate", (1, 3), "the test split has no usable images"),
    ("evaluate", (1, 5), "calibrate = true needs training images to fit the site's line"),
])
def test_a_site_without_the_images_a_message_needs_refuses_it(site, tmp_path, kind, ids, reason) -> None:
    data = subset(site, ids, tmp_path / "subset")
    node = _node(site, tmp_path / "state", data=data, calibrate=True)
    handler = train if kind == "train" else evaluate
    answer = handler(_message(kind, _state(site, 4, 5, 6)), Context(1, 1, node, RecordDict(), {}))
    assert answer.has_error() and answer.error.code == REFUSED
    assert answer.error.reason == f"DataError: {data}: {reason}"


def test_a_site_refuses_another_pretrained_model_and_fedrep_under_dp_sgd(site, tmp_path) -> None:
    node = _node(site, tmp_path)
    wrong = train(_message("train", _state(site, 6), **{"pretrained-sha256": "0" * 64}),
                  Context(1, 1, node, RecordDict(), {}))
    assert wrong.error.reason == f"CheckpointError: {site[1]} is not the pretrained model of this run (SHA-256 differs)"
    right = SiteSession(_config(site, tmp_path), _state(site, 6), {"pretrained-sha256": file_sha256(site[1])},
                        RecordDict())
    assert (right.pretrained_sha256, right.round, right.run_id, right.federation_id) == (file_sha256(site[1]), 0, 0, "")
    private = replace(_config(site, tmp_path), dp=DPConfig(enabled=True, noise_multiplier=1.0, max_epsilon=8.0))
    with pytest.raises(ConfigError, match=r"^local-layers = head \(FedRep\) cannot run with DP-SGD at a site; turn "
                                         r"one of them off$"):
        SiteSession(private, _state(site, 4, 5), {"local-layers": "head"}, RecordDict()).train()


@pytest.mark.parametrize("freeze, own, steps, returned", [
    ("1-3", "none", [(1, 2, 3, 4, 5), (1, 2, 3, 6)], {4, 5}),  # the head with the body fixed, then the body
    ("1-5", "none", [(1, 2, 3, 4, 5)], set()),  # no shared block trains: the head alone
    ("1-3", "1-4", [(1, 2, 3, 4, 5), (1, 2, 3, 4, 6)], {5}),  # a site that freezes deeper trains less of the body
    ("2-5", "none", [(1, 2, 3, 4, 5), (2, 3, 4, 5, 6)], {1}),  # block 1 alone is the body
])
def test_fedrep_trains_the_head_then_the_body_and_keeps_the_head(site, tmp_path, monkeypatch, freeze, own, steps,
                                                                returned) -> None:
    calls = stub_training(monkeypatch, SiteRoundResult(7, 1.0, 1.0, 1.0))
    sent = {k: v for k, v in _state(site).items() if block_of_key(k) not in {*FreezeSpec.parse(freeze).blocks, 6}}
    state = RecordDict()
    server = {"freeze": freeze, "local-layers": "head", "server-round": 7}
    session = SiteSession(_config(site, tmp_path, freeze=own), sent, server, state)
    arrays, metrics = session.train()
    assert [call[2].freeze for call in calls] == steps
    assert all(call[3:7] == (torch.device("cpu"), 7, (), {"label_unit": "months"}) for call in calls)  # no DP
    assert all(call[7] is session.model for call in calls)
    assert {block_of_key(k) for k in arrays} == returned and metrics["frozen-block-6"] == 0.0  # yet it trains
    assert {block_of_key(k) for k in state.array_records[LOCAL_LAYERS_KEY]} == {6}  # the head stays at the site


def test_fedbn_layers_are_reused_only_within_the_same_run_or_federation_and_pretrained_model(site, tmp_path) -> None:
    norms = [k for k in norm_layer_keys(load_checkpoint(site[1]).model) if block_of_key(k) >= 4]
    kept = {k: torch.full_like(v, 7.0) for k, v in _state(site).items() if k in norms}
    assert kept
    sha = file_sha256(site[1])
    sent = _state(site, 4, 5, 6)

    def layers(saved: LocalLayers | None, run_id: int, federation: str, local: str = "norm",
               state: RecordDict | None = None) -> bool:
        folder = tmp_path / f"s{run_id}{federation}{local}{saved is None}"
        if saved is not None:
            save_local_layers(folder, saved)
        session = SiteSession(_config(site, folder), sent, {"local-layers": local, "federation-id": federation},
                              state or RecordDict(), run_id=run_id)
        model = session.model.state_dict()
        return all(torch.equal(model[k], kept[k]) for k in norms)

    assert layers(LocalLayers(kept, 5, 1, sha, ""), run_id=5, federation="")  # a restarted SuperNode, same run
    assert layers(LocalLayers(kept, 5, 1, sha, "f1"), run_id=6, federation="f1")  # a resumed federation
    assert not layers(LocalLayers(kept, 5, 1, sha, ""), run_id=6, federation="")  # no id to match: another run
    assert not layers(LocalLayers(kept, 5, 1, sha, "f1"), run_id=6, federation="f2")
    assert not layers(LocalLayers(kept, 5, 1, "0" * 64, "f1"), run_id=5, federation="f1")  # another pretrained model
    assert not layers(LocalLayers(kept, 5, 1, sha, "f1"), run_id=5, federation="f1", local="none")
    assert layers(None, run_id=1, federation="", local="none", state=RecordDict({LOCAL_LAYERS_KEY: ArrayRecord(kept)}))


def test_a_calibrating_site_keeps_its_line_fitted_with_the_models_tta(site, tmp_path, caplog) -> None:
    parent, tta, cpu = load_checkpoint(site[1]), TTAConfig(shift=0.04, scale=0.05), torch.device("cpu")
    with_tta = save_checkpoint(tmp_path / "tta.pt", parent.model, {**parent.metadata, "tta": tta.to_dict()})
    config = _config(site, tmp_path / "state", calibrate=True, pretrained=str(with_tta))
    server = {"server-round": 3, "federation-id": "f9"}
    _, raw = SiteSession(replace(config, calibrate=False), _state(site), server, RecordDict()).evaluate()
    with caplog.at_level(logging.INFO, logger="ossifl.client"):
        _, calibrated = SiteSession(config, _state(site), server, RecordDict()).evaluate()
    data = load_site(config.data, 32, None, seed=0, splits=("train", "test"))
    scored = [evaluate_model(parent.model, data.test, cpu, "months", tta=t)["mad_months"] for t in (tta, None)]
    assert raw["mad-months"] == pytest.approx(scored[0], rel=1e-5) != pytest.approx(scored[1], rel=1e-5)
    assert abs(calibrated["mad-months"] - raw["mad-months"]) > 0.1  # an untrained model's scale: the line moves it
    fitted = predict(parent.model, make_loader(data.train, 64, shuffle=False, seed=0), cpu, tta=tta)
    expected = fit_sex_calibration(fitted.predicted_months, fitted.true_months, fitted.male)
    kept = load_site_calibration(tmp_path / "state")
    assert (kept.round, kept.pretrained_sha256, kept.federation_id, kept.n_train) == (3, file_sha256(with_tta), "f9",
                                                                                      len(TRAIN_IDS))
    boys, girls = kept.line.boys, kept.line.girls
    assert (boys.slope, girls.slope) == pytest.approx((expected.boys.slope, expected.girls.slope), rel=1e-4)
    assert caplog.records[-1].getMessage() == (
        f"site 3 round 3: calibration fitted on {len(TRAIN_IDS)} training images (boys {boys.intercept:.2f} + "
        f"{boys.slope:.3f} x, girls {girls.intercept:.2f} + {girls.slope:.3f} x)")
    two = subset(site, (1, 3, 5), tmp_path / "two")  # the fewest training images a line is fitted on
    SiteSession(_config(site, tmp_path / "state", data=two, calibrate=True), _state(site), {}, RecordDict()).evaluate()
