"""The Flower ServerApp: federates the pretrained TJ-Net across the connected sites."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from server.config import FederationConfig
from server.federation import run_federation

logger = logging.getLogger("ossifl.server")
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Read the run config, run the federation, leave the merged model in `out-dir`."""
    config = FederationConfig.from_run_config(context.run_config)
    logger.info("federation: strategy %s, freeze %s, %d rounds", config.strategy, config.freeze, config.num_rounds)
    run_federation(grid, config)


def make_server_app(configs: Sequence[FederationConfig], outcomes: list | None = None) -> ServerApp:
    """A ServerApp that runs `configs` one after the other on the same sites.

    The simulation engine gives apps an empty run config, so the configs are bound here; running
    several federations in one engine session saves its start-up per run. Each run's
    `FederationOutcome` is appended to `outcomes` when given.
    """
    bound = ServerApp()

    @bound.main()
    def bound_main(grid: Grid, context: Context) -> None:
        for config in configs:
            logger.info("federation: strategy %s, freeze %s, %d rounds -> %s", config.strategy, config.freeze,
                        config.num_rounds, config.out_dir)
            result = run_federation(grid, config)
            if outcomes is not None:
                outcomes.append(result)

    return bound
