"""A federation before its first round, without the engine: the arrays it shares and what it records.

What it records is what it applied (the aggregator it built, not the options it was asked for); under FedBN the
normalisation layers are never among the arrays it sends and aggregates.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord

from core.checkpoint import describe, load_checkpoint, save_checkpoint
from core.model.config import TJNetConfig
from core.model.groups import block_of_key, norm_layer_keys
from core.model.tjnet import TJNet
from core.round_settings import RoundSettings
from server.config import FederationConfig
from server.federation import LATEST, Federation


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = TJNet(TJNetConfig(image_size=32, width=0.25))
    return save_checkpoint(tmp_path_factory.mktemp("applied") / "pretrained.pt", model, describe(model))


@pytest.mark.parametrize("strategy,options,key,value", [
    ("fedavgm", {"server-momentum": 0.5}, "server-momentum", 0.5),
    ("fedadam", {"eta": 0.02, "tau": 0.01}, "tau", 0.01),
    ("fedtrimmedavg", {"trimmed-beta": 0.1}, "trimmed-beta", 0.1),
    ("fedprox", {"proximal-mu": 0.3}, "proximal-mu", 0.3),
])
def test_the_checkpoint_records_the_options_of_the_aggregator_that_was_built(pretrained: Path, tmp_path: Path,
                                                                              strategy, options, key, value) -> None:
    config = FederationConfig(pretrained=pretrained, settings=RoundSettings(num_rounds=1), out_dir=tmp_path,
                              strategy=strategy, strategy_options=options, device="cpu")
    federation = Federation(config)
    assert federation.applied[key] == str(value)
    merged = federation.merge(1, ArrayRecord({k: federation.model.state_dict()[k] for k in federation.keys}))
    assert merged is None  # no central set: no server-side metrics for Flower to log
    recorded = load_checkpoint(tmp_path / LATEST).metadata["run_config"]
    assert recorded[key] == str(value) and recorded["strategy"] == strategy


def test_applied_options_are_read_from_the_aggregator_not_the_request() -> None:
    from strategies import build_aggregator
    from strategies.options import applied_options

    assert applied_options(build_aggregator("fedavgm", server_momentum=0.25)) == {
        "server-learning-rate": 1.0, "server-momentum": 0.25}
    assert applied_options(build_aggregator("fedavg")) == {}


def test_fedbn_keeps_normalisation_layers_out_of_what_the_server_sends_and_aggregates(pretrained: Path,
                                                                                     tmp_path: Path) -> None:
    norms = set(norm_layer_keys(load_checkpoint(pretrained).model))
    plain, fedbn = (Federation(FederationConfig(pretrained=pretrained, out_dir=tmp_path / layers, device="cpu",
                                                settings=RoundSettings(num_rounds=1, local_layers=layers)))
                    for layers in ("none", "norm"))
    unfrozen_norms = {k for k in norms if block_of_key(k) >= 4}
    assert unfrozen_norms and unfrozen_norms <= set(plain.keys)  # without FedBN they travel
    assert fedbn.keys and not set(fedbn.keys) & norms
    assert set(fedbn.keys) == set(plain.keys) - norms


@pytest.mark.parametrize("recorded", [{"tta": {"shift": 0.04, "scale": 0.05}, "preprocess": None}, {}])
def test_the_federations_checkpoints_and_final_model_inherit_the_pretrained_models_tta(tmp_path: Path,
                                                                                       recorded: dict) -> None:
    torch.manual_seed(0)
    model = TJNet(TJNetConfig(image_size=32, width=0.25))
    parent = save_checkpoint(tmp_path / "pretrained.pt", model, describe(model, **recorded))
    federation = Federation(FederationConfig(pretrained=parent, settings=RoundSettings(num_rounds=1),
                                             out_dir=tmp_path / "run", device="cpu"))
    federation.merge(1, ArrayRecord({k: federation.model.state_dict()[k] for k in federation.keys}))
    final = federation._finish({}).final_checkpoint
    for path in (tmp_path / "run" / LATEST, final):
        written = load_checkpoint(path).metadata
        assert {k: written[k] for k in ("tta", "preprocess") if k in written} == recorded  # none: one pass


def test_the_strategy_is_built_with_the_runs_site_counts(pretrained: Path, tmp_path: Path) -> None:
    federation = Federation(FederationConfig(pretrained=pretrained, settings=RoundSettings(num_rounds=1), device="cpu",
                                             out_dir=tmp_path, min_nodes=3, fraction_evaluate=0.5))
    strategy = federation.strategy
    assert (strategy.min_train_nodes, strategy.min_available_nodes, strategy.fraction_evaluate) == (3, 3, 0.5)
