"""The Flower ServerApp: federates the pretrained TJ-Net across the connected sites."""

from __future__ import annotations

import logging

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
    logger.info("federation: strategy %s %s, freeze %s, %d rounds", config.strategy, config.aggregator_options(),
                config.freeze, config.num_rounds)
    run_federation(grid, config)
