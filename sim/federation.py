"""Federations in Flower's simulation engine, with each simulated site configured like a deployed one.

A deployed SuperNode reads its node config from `--node-config site.toml`; the simulation engine
gives a node only its partition id. Here `sim/` supplies the rest: every simulated site gets a
node config with the keys of `deploy/site.toml` (data-path, label-unit, state-dir, dp-*, ...), so
`client/` never sees simulation. Several federations share one engine session (its start-up is
paid once); each outgoing message is tagged with its run's index so that a site answers with that
run's node config and state.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from client.config import NODE_KEYS, SITE_SCHEMA
from core.data import SiteDataConfig
from core.data.config import LAYOUT_SCHEMA
from core.errors import FederationFailed
from server.config import FederationConfig
from server.federation import run_federation
from server.outcome import FederationOutcome

logger = logging.getLogger("ossifl.sim")

RUN_TAG = "sim-run"  # message config key naming the federation a message belongs to


@dataclass(frozen=True)
class SimulatedRun:
    """One federation and the node config of each simulated site (in partition order)."""

    config: FederationConfig
    sites: tuple[dict[str, Any], ...]


def site_node_config(data: Path, site_id: int, state_dir: Path, pretrained: Path, label_unit: str = "months",
                     device: str = "cpu", **extra: Any) -> dict[str, Any]:
    """A simulated site's node config: the keys of `deploy/site.toml`, decoded images kept in memory.

    `extra` holds more node config keys (the manifest's, `dp-*`, `feature-cache`, `freeze`); a key no site reads
    is a bug here, not a setting the site would silently ignore.
    """
    unknown = set(extra) - NODE_KEYS
    if unknown:
        raise ValueError(f"no site reads the node config keys {sorted(unknown)}; known: {sorted(NODE_KEYS)}")
    own = SITE_SCHEMA.write({"data_path": str(data), "site_id": site_id, "state_dir": str(state_dir),
                             "pretrained": str(pretrained), "device": device, "decode_cache": "none"}, "node")
    return {**own, **LAYOUT_SCHEMA.write({"label_unit": label_unit}, "node"), **extra}


def manifest_keys(data: SiteDataConfig) -> dict[str, str]:
    """The node config keys (`deploy/site.toml`) that declare a site's manifest: file, image folder, columns."""
    return {key: value for key, value in data.node_config().items() if key != "label-unit"}


class _TaggedGrid:
    """A Grid that stamps every outgoing message with the run's tag (everything else is delegated)."""

    def __init__(self, grid: Grid, tag: int) -> None:
        self._grid, self._tag = grid, tag

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def _tagged(self, messages: Iterable[Message]) -> list[Message]:
        tagged = list(messages)
        for message in tagged:
            message.content["config"][RUN_TAG] = self._tag
        return tagged

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(self._tagged(messages))

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self._grid.send_and_receive(self._tagged(messages), timeout=timeout)


def make_server_app(configs: Sequence[FederationConfig], outcomes: list[FederationOutcome]) -> ServerApp:
    """A ServerApp that runs `configs` one after the other on the same simulated sites."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        for tag, config in enumerate(configs):
            if config.interval_from is not None:
                logger.info("federation %d/%d: only the interval of %s -> %s", tag + 1, len(configs),
                            config.interval_from, config.out_dir)
            else:
                logger.info("federation %d/%d: strategy %s, freeze %s, %d rounds -> %s", tag + 1, len(configs),
                            config.strategy, config.freeze, config.num_rounds, config.out_dir)
            outcomes.append(run_federation(_TaggedGrid(grid, tag), config))

    return app


def make_client_app(sites_by_run: Sequence[Sequence[dict[str, Any]]]) -> ClientApp:
    """OssiFL's ClientApp with each simulated node given its site's node config and a state per run."""
    from client.app import evaluate as client_evaluate
    from client.app import query as client_query
    from client.app import train as client_train

    app = ClientApp()

    def as_site(handler: Any, msg: Message, context: Context) -> Message:
        tag = int(msg.content["config"].get(RUN_TAG, 0))  # a server that does not tag runs one federation
        node_config = dict(sites_by_run[tag][int(context.node_config["partition-id"])])
        prefix = f"{RUN_TAG}-{tag}/"
        state = RecordDict({k[len(prefix):]: v for k, v in context.state.items() if k.startswith(prefix)})
        reply = handler(msg, Context(context.run_id, context.node_id, node_config, state, context.run_config))
        for key, record in state.items():
            context.state[prefix + key] = record
        return reply

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return as_site(client_train, msg, context)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return as_site(client_evaluate, msg, context)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        return as_site(client_query, msg, context)

    return app


def site_resources(num_sites: int, cpu_count: int, gpu_count: int, cpus_per_site: float = 1.0) -> dict[str, float]:
    """What each simulated site claims from Ray: `cpus_per_site` cores and, when there are GPUs, an equal share.

    As many sites train at once as the cores allow (cpu_count // cpus_per_site, at most `num_sites`);
    with GPUs those sites share them evenly (one GPU and four concurrent sites: a quarter each, so all
    four train on it at once; a site never claims more than one GPU).
    """
    concurrent = max(1, min(num_sites, int(cpu_count // cpus_per_site)))
    gpus = min(1.0, gpu_count / concurrent) if gpu_count > 0 else 0.0
    return {"num_cpus": cpus_per_site, "num_gpus": gpus}


def run_federations(runs: Sequence[SimulatedRun], cpus_per_site: float = 1.0) -> list[FederationOutcome]:
    """All runs in one session of Flower's simulation engine; their outcomes in the same order.

    A run in which a round had no site train stops without a final model; its outcome's `failure` says why,
    and the runs after it go on. The caller decides what a failed run means for its results.

    Each simulated site claims `site_resources(...)`: `cpus_per_site` cores and, on a machine with CUDA
    GPUs, a share of them (its node config's `device = "auto"` then trains on the GPU Ray assigns it).
    """
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    import torch
    from flwr.simulation import run_simulation

    num_sites = {len(run.sites) for run in runs}
    if len(num_sites) != 1:
        raise ValueError(f"runs sharing one simulation need the same number of sites, got {sorted(num_sites)}")
    sites = num_sites.pop()
    resources = site_resources(sites, os.cpu_count() or 1, torch.cuda.device_count(), cpus_per_site)
    logger.info("simulation: %d sites, each claiming %g CPU core(s) and %g GPU(s)", sites, resources["num_cpus"],
                resources["num_gpus"])
    outcomes: list[FederationOutcome] = []
    run_simulation(server_app=make_server_app([run.config for run in runs], outcomes),
                   client_app=make_client_app([run.sites for run in runs]),
                   num_supernodes=sites, backend_config={"client_resources": resources})
    if len(outcomes) != len(runs):
        raise FederationFailed(f"only {len(outcomes)} of {len(runs)} federated runs finished; see the log above")
    return outcomes
