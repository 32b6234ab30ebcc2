"""The Flower ServerApp: federates the pretrained TJ-Net across the connected sites."""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from core.errors import FederationFailed
from server.config import FederationConfig
from server.federation import run_federation

logger = logging.getLogger("ossifl.server")
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Read the run config, run the federation, leave the merged model in `out-dir`; a failed run fails the app."""
    config = FederationConfig.from_run_config(context.run_config)
    if config.interval_from is not None:
        logger.info("federation: no round, only the interval of %s", config.interval_from)
    else:
        logger.info("federation: strategy %s %s, freeze %s, %d rounds", config.strategy, config.aggregator_options(),
                    config.freeze, config.num_rounds)
    outcome = run_federation(grid, config)
    if outcome.failure:  # Flower then reports the run as finished:failed
        raise FederationFailed(outcome.failure)
