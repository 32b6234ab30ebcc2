"""FedBN and FedRep in `python -m sim`: each site is evaluated with the federated model plus its own normalisation
layers (FedBN) or its own head (FedRep)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from core.checkpoint import load_checkpoint
from core.errors import FederationFailed
from core.stages.local_layers import LOCAL_LAYERS_FILE
from core.model.groups import parameter_groups
from core.preprocess import preprocess_config_of
from sim.config import SimConfig
from sim.experiment import evaluate_everywhere, evaluate_fedbn, federation_runs, load_test_splits
from sim.federation import SimulatedRun
from sim.sites import PreparedSite

CPU = torch.device("cpu")


ENGINE_IMAGES = 30


def _sites(tiny) -> list[PreparedSite]:
    return [PreparedSite(path.name, path, "months") for path in tiny.sites]


def engine_runs(root: Path, tiny) -> list[SimulatedRun]:
    """`python -m sim`'s federations at the baseline freeze spec with FedRep, on `tiny` (tests/conftest.py's
    TinySites); they run in the suite's one engine session (`engine_session`)."""
    config = SimConfig(out_dir=root / "out", freeze_specs=("1-3",), baseline_freeze="1-3", rounds=2, batch_size=8,
                       device="cpu", fedrep=True)
    return federation_runs(config, _sites(tiny), tiny.pretrained)


@pytest.fixture(scope="module")
def fedbn(engine_result):
    sites = _sites(engine_result.tiny)
    tests = load_test_splits(sites, 48, preprocess_config_of(load_checkpoint(engine_result.tiny.pretrained).metadata))
    return sites, tests, engine_result.runs, engine_result.outcomes


def test_the_sim_runs_one_fedbn_federation_at_the_baseline_freeze_spec(fedbn) -> None:
    _, _, runs, _ = fedbn
    assert [(r.config.freeze, r.config.settings.local_layers) for r in runs] == [("1-3", "none"), ("1-3", "norm"),
                                                                                ("1-3", "head")]
    assert [r.config.out_dir.name for r in runs[1:]] == ["fedavg_freeze-1-3_fedbn", "fedavg_freeze-1-3_fedrep"]


def test_each_site_is_scored_with_its_own_norm_layers_as_it_scored_itself(fedbn) -> None:
    sites, tests, runs, outcomes = fedbn
    rows = evaluate_fedbn(outcomes[1], runs[1], sites, tests, "fedavg", CPU)
    assert [(r.site, r.strategy, r.freeze) for r in rows] == [(s.name, "fedavg+fedbn", "1-3") for s in sites]
    last = outcomes[1].rounds[-1]
    for index, row in enumerate(rows):  # the site's own evaluation in the last round used its node state's layers
        assert row.metrics["mad_months"] == pytest.approx(last.evaluate[str(index)]["mad-months"], rel=1e-4)
    model = load_checkpoint(outcomes[1].final_checkpoint).model
    shared_only = evaluate_everywhere(model, sites, tests, "global", "1-3", CPU)
    for kept, plain in zip(rows, shared_only):  # the global model's own (pretrained) norm layers score differently
        assert not torch.allclose(torch.as_tensor(kept.predictions.predicted_months),
                                  torch.as_tensor(plain.predictions.predicted_months))
    local = parameter_groups(model, (1, 2, 3), "norm").local
    a, b = (torch.load(runs[1].sites[i]["state-dir"] + "/" + LOCAL_LAYERS_FILE, weights_only=True)["layers"]
            for i in range(2))
    assert set(a) == set(local) and any(not torch.equal(a[k], b[k]) for k in local)


def test_a_site_without_layers_of_the_last_round_fails_the_fedbn_evaluation(fedbn, tmp_path) -> None:
    sites, tests, runs, outcomes = fedbn
    moved = replace(runs[1], sites=(runs[1].sites[0], {**runs[1].sites[1], "state-dir": str(tmp_path)}))
    with pytest.raises(FederationFailed, match=f"site {sites[1].name} did not train in the last round"):
        evaluate_fedbn(outcomes[1], moved, sites, tests, "fedavg", CPU)


def test_fedrep_sites_keep_their_own_head_and_the_server_never_averages_it(fedbn) -> None:
    sites, tests, runs, outcomes = fedbn
    cross: list = []
    rows = evaluate_fedbn(outcomes[2], runs[2], sites, tests, "fedavg", CPU, cross)
    assert [(r.site, r.strategy, r.freeze) for r in rows] == [(s.name, "fedavg+fedrep", "1-3") for s in sites]
    last = outcomes[2].rounds[-1]
    for index, row in enumerate(rows):  # as the site scored itself in the last round, with its own head
        assert row.metrics["mad_months"] == pytest.approx(last.evaluate[str(index)]["mad-months"], rel=1e-4)
    assert sorted((r.extra["model_site"], r.site) for r in cross) == sorted((a.name, b.name) for a in sites
                                                                             for b in sites)
    final = load_checkpoint(outcomes[2].final_checkpoint).model.state_dict()
    pretrained = load_checkpoint(runs[2].config.pretrained).model.state_dict()
    heads = [torch.load(runs[2].sites[i]["state-dir"] + "/" + LOCAL_LAYERS_FILE, weights_only=True)["layers"]
             for i in range(2)]
    assert set(heads[0]) == {k for k in final if k.startswith("block6.")}
    assert all(torch.equal(final[k], pretrained[k]) for k in heads[0])  # the server's copy of the head is untouched
    assert any(not torch.equal(heads[0][k], heads[1][k]) for k in heads[0])  # each site trained its own
    assert any(not torch.equal(final[k], pretrained[k]) for k in final if k.startswith("block4."))  # body shared
