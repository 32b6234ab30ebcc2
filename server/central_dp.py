"""Central (client-level) DP: Flower's server-side fixed clipping and RDP accountant around our strategy.

Each round the server clips every site's update to an L2 norm C, averages the sites uniformly and adds
Gaussian noise of std sigma * C / n (n = min-nodes, every site sampled every round, no amplification).
The accountant composes one Gaussian release per round; Flower raises `PrivacyBudgetExhausted` from
`configure_train` before a round that would push epsilon past `central-dp-max-epsilon`.

Flower accepts an accountant only around a strategy whose `aggregate_train` is FedAvg's own, the
uniform mean the accounting assumes. `PartialModelStrategy` overrides it (per-key aggregation,
per-site reports), but computes that same mean when its aggregator is a weighted mean and every
reply carries all the global arrays with the same weight. `AccountedFixedClipping` checks exactly
that every round and releases nothing from a round that does not qualify.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp import NeighboringRelation, PrivacyConfig, RdpAccountant, SamplingMethod
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping

from core.errors import ConfigError
from core.model.groups import batch_norm_keys
from server.config import FederationConfig
from strategies import PartialModelStrategy, validate_update
from strategies.partial import read_reply

logger = logging.getLogger("ossifl.server")

MEAN_AGGREGATORS = ("fedavg", "fedprox")  # the aggregators whose result is the plain weighted mean


class AccountedFixedClipping(DifferentialPrivacyServerSideFixedClipping):
    """Flower's server-side fixed clipping with an accountant, around a mean-aggregating PartialModelStrategy."""

    def __init__(self, strategy: PartialModelStrategy, noise_multiplier: float, clipping_norm: float,
                 accountant: RdpAccountant) -> None:
        if strategy.aggregator.name not in MEAN_AGGREGATORS:
            raise ConfigError(f"central DP needs a mean aggregation ({', '.join(MEAN_AGGREGATORS)}), "
                             f"not {strategy.aggregator.name!r}: its noise is calibrated to a uniform mean")
        population = accountant.config.population_size
        # Flower's own accountant check compares classes; the property it stands for is checked per round
        super().__init__(strategy, noise_multiplier, clipping_norm, population)
        self.accountant = accountant
        self.round_offset = strategy.round_offset

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Clip, average uniformly and add noise; nothing is released if a reply breaks the uniform mean."""
        received = list(replies)
        problem = self._refusal(received)
        if problem is None:
            return super().aggregate_train(server_round, received)
        self.strategy.record_unreleased(server_round, received)
        self._pop_pending_event(server_round)
        logger.warning("central DP round %d: %s; nothing released, global model unchanged",
                       server_round + self.round_offset, problem)
        return None, None

    def _refusal(self, replies: list[Message]) -> str | None:
        """Why these replies cannot be released as a uniform mean of all global arrays, or None."""
        failed = sum(msg.has_error() for msg in replies)
        missing = len(self.strategy.sent) - len(replies)
        if failed or missing > 0:
            return f"{failed} site(s) answered with an error and {max(missing, 0)} did not answer in time"
        global_arrays = {key: array.numpy() for key, array in self.current_arrays.items()}
        weight_key = self.strategy.weighted_by_key
        weights: set[int] = set()
        for msg in replies:
            report, update = read_reply(msg.metadata.src_node_id, msg.content, weight_key, with_arrays=True)
            reason = report.reason if update is None else validate_update(global_arrays, update)
            if reason is None and list(update.arrays) != list(global_arrays):
                reason = (f"returned {len(update.arrays)} of the {len(global_arrays)} global arrays "
                          "(a site freezing deeper than the run is refused under central DP)")
            if reason is not None:
                return f"site {report.site}: {reason}"
            weights.add(update.num_examples)
        if len(weights) > 1:
            return f"sites reported different {weight_key!r} {sorted(weights)} (each must send 1 under central DP)"
        return None

    def epsilon(self) -> float:
        """Central epsilon spent so far, at the configured delta."""
        return self.accountant.get_privacy_spent().epsilon

    def accountant_state(self) -> dict[str, Any]:
        """The accountant's JSON-serialisable state, for the per-round checkpoint."""
        return self.accountant.state_dict()


def check_shippable(model: torch.nn.Module, keys: Sequence[str]) -> None:
    """Refuse arrays that must not go through central DP: BatchNorm layers and non-float tensors."""
    batch_norms = set(batch_norm_keys(model))
    shipped = [key for key in keys if key in batch_norms]
    if shipped:
        raise ConfigError(f"central DP cannot ship BatchNorm layers ({shipped[0]} and {len(shipped) - 1} more): "
                         "their running statistics are not clipped or accounted; use a GroupNorm TJ-Net "
                         "or local-layers=norm")
    state = model.state_dict()
    integer = [key for key in keys if not torch.is_floating_point(state[key])]
    if integer:
        raise ConfigError(f"central DP adds noise to float arrays only; {integer[0]} is {state[integer[0]].dtype}")


def wrap_central_dp(strategy: PartialModelStrategy, config: FederationConfig, model: torch.nn.Module,
                    keys: Sequence[str], accountant_state: dict[str, Any] | None) -> AccountedFixedClipping:
    """The DP wrapper for this run; `accountant_state` (from a checkpoint) continues the accounting."""
    check_shippable(model, keys)
    accountant = RdpAccountant(PrivacyConfig(
        target_delta=config.central_dp_delta, population_size=config.min_nodes,
        neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
        sampling_method=SamplingMethod.NO_AMPLIFICATION,
        max_epsilon=config.central_dp_max_epsilon or None,
    ))
    if accountant_state is not None:
        try:
            accountant.load_state_dict(accountant_state)
        except ValueError as exc:
            raise ConfigError(f"cannot resume under central DP: {exc} (resume with the same central-dp-* "
                             "settings and min-nodes)") from exc
    wrapper = AccountedFixedClipping(strategy, config.central_dp_noise_multiplier, config.central_dp_clipping_norm,
                                     accountant)
    logger.info("central DP: noise std %.4g on the mean (sigma %g, clip %g, %d sites), delta %g, max epsilon %s, "
                "epsilon so far %.3f", config.central_dp_noise_multiplier * config.central_dp_clipping_norm
                / config.min_nodes, config.central_dp_noise_multiplier, config.central_dp_clipping_norm,
                config.min_nodes, config.central_dp_delta, config.central_dp_max_epsilon or "none", wrapper.epsilon())
    return wrapper
