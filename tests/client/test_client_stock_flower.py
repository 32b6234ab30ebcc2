"""OssiFL's ClientApp driven by a ServerApp built only from Flower's own FedAvg: train and evaluate, two sites."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from client.site import TRAIN_METRICS, evaluate_metric_keys
from sim.federation import make_client_app


def test_a_stock_fedavg_server_trains_and_evaluates_the_whole_model(tmp_path: Path, tiny_federation) -> None:
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    from flwr.simulation import run_simulation

    tiny = tiny_federation(tmp_path, 24)
    initial = torch.load(tiny.pretrained, weights_only=True)["state_dict"]
    results: dict = {}
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:  # no OssiFL code: Flower's FedAvg, the whole model, no freeze
        strategy = FedAvg(min_train_nodes=2, min_evaluate_nodes=2, min_available_nodes=2)
        results["result"] = strategy.start(grid=grid, initial_arrays=ArrayRecord(initial), num_rounds=1,
                                           train_config=ConfigRecord({"batch-size": 8}))

    run_simulation(server_app=server, client_app=make_client_app([tiny.nodes(tmp_path / "state")]),
                   num_supernodes=2, backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    result = results["result"]
    final = result.arrays.to_torch_state_dict()
    assert list(final) == list(initial)  # the whole model came back and was averaged
    assert any(not torch.equal(final[k], initial[k]) for k in initial if k.startswith("block1."))
    train = result.train_metrics_clientapp[1]
    evaluate = result.evaluate_metrics_clientapp[1]
    # Flower averages every key but its weighting key, which works only because every site sends the same keys
    assert set(train) == (set(TRAIN_METRICS) | {"site-seconds"}) - {"num-examples"}
    assert train["frozen-depth"] == 0
    assert set(evaluate) == (set(evaluate_metric_keys()) | {"site-seconds"}) - {"num-examples"}
    assert evaluate["mad-months"] > 0
