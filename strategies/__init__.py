"""Server-side aggregation for partial TJ-Net models: six strategies, per-key, with reply validation."""

from strategies.aggregation import AGGREGATORS, Aggregator, SiteUpdate, build_aggregator, validate_update
from strategies.partial import NoSiteTrained, PartialModelStrategy, SiteReport, build_strategy

STRATEGY_NAMES = ("fedavg", "fedprox", "fedavgm", "fedadam", "fedmedian", "fedtrimmedavg")

__all__ = [
    "AGGREGATORS",
    "STRATEGY_NAMES",
    "Aggregator",
    "NoSiteTrained",
    "PartialModelStrategy",
    "SiteReport",
    "SiteUpdate",
    "build_aggregator",
    "build_strategy",
    "validate_update",
]
