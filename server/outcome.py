"""What a federated run returns: the final model, the settings it ran with and its per-round metrics.

`sim` and the tests read this rather than re-reading `metrics.csv` (which stays the durable record).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class RoundMetrics:
    """One round as the server saw it.

    Attributes:
        round: the round number (counted over resumes).
        train, evaluate: site name -> the metrics of its accepted reply.
        refused: "phase/site" -> why the reply was rejected or what error the site returned.
        central: the server's own figures (central evaluation, timing, central epsilon).
    """

    round: int
    train: dict[str, dict[str, float]] = field(default_factory=dict)
    evaluate: dict[str, dict[str, float]] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    central: dict[str, float] = field(default_factory=dict)


@dataclass
class FederationOutcome:
    """The result of `run_federation`.

    Attributes:
        final_checkpoint: the merged model after the last round; None when the run failed.
        rounds_done: rounds completed, counted over resumes.
        shared_keys: the state keys sent to and aggregated from the sites.
        bytes_per_site_per_round: size of those arrays.
        settings: the run's settings, flat, under their run config keys (strategy options included).
        rounds: the rounds this process ran, in order (a resumed run starts after the checkpoint's round).
        central_epsilon: central DP epsilon spent, or None without central DP.
        failure: why the run stopped without a final model ("" when it finished).
    """

    final_checkpoint: Path | None
    rounds_done: int
    shared_keys: list[str]
    bytes_per_site_per_round: int
    settings: dict[str, str]
    rounds: list[RoundMetrics] = field(default_factory=list)
    central_epsilon: float | None = None
    failure: str = ""

    def per_round(self, phase: str, metric: str) -> dict[str, list[float]]:
        """site -> `metric` of each round it reported in, in round order (`phase` "train" or "evaluate")."""
        series: dict[str, list[float]] = {}
        for record in self.rounds:
            for site, metrics in getattr(record, phase).items():
                if metric in metrics:
                    series.setdefault(site, []).append(metrics[metric])
        return series

    def last(self, phase: str, metric: str) -> dict[str, float]:
        """site -> the last reported value of `metric`."""
        return {site: values[-1] for site, values in self.per_round(phase, metric).items() if values}
