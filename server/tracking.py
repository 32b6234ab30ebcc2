"""Per-round, per-site metrics to CSV (always) and to Weights & Biases (when asked)."""

from __future__ import annotations

import csv
import logging
import math
import os
from pathlib import Path
from typing import Any

from server.outcome import RoundMetrics

logger = logging.getLogger("ossifl.server")

COLUMNS = ("round", "phase", "site", "status", "reason", "metric", "value")


class MetricsTracker:
    """Appends one row per (round, phase, site, metric) to `metrics.csv` in the run folder,
    and keeps the same figures in memory, per round, for the run's `FederationOutcome`."""

    def __init__(self, out_dir: Path, use_wandb: bool = False, run_name: str = "ossifl", config: dict | None = None):
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / "metrics.csv"
        new = not self.path.exists()
        self._file = open(self.path, "a", newline="", encoding="utf-8")
        self._writer = csv.writer(self._file)
        if new:
            self._writer.writerow(COLUMNS)
        self._wandb = _start_wandb(out_dir, run_name, config or {}) if use_wandb else None
        self._train_seconds: dict[int, float] = {}
        self._site_seconds = 0.0  # summed over the messages answered since the last round_timing
        self.rounds: dict[int, RoundMetrics] = {}

    def _round(self, server_round: int) -> RoundMetrics:
        return self.rounds.setdefault(server_round, RoundMetrics(server_round))

    def site_reports(self, phase: str, server_round: int, reports: list[Any]) -> None:
        """Callback for the strategy: one call per aggregation with a `SiteReport` per site."""
        logged: dict[str, float] = {}
        record = self._round(server_round)
        for report in reports:
            if report.status == "ok":
                getattr(record, phase)[report.site] = dict(report.metrics)
            else:
                record.refused[f"{phase}/{report.site}"] = f"{report.status}: {report.reason}"
                self._writer.writerow((server_round, phase, report.site, report.status, report.reason, "", ""))
                logger.warning("round %d %s: site %s %s: %s", server_round, phase, report.site, report.status,
                               report.reason)
            for metric, value in report.metrics.items():
                self._writer.writerow((server_round, phase, report.site, report.status, "", metric, value))
                logged[f"{phase}/site-{report.site}/{metric}"] = value
        if phase == "train":
            self._train_seconds[server_round] = sum(r.metrics.get("train-seconds", 0.0) for r in reports)
        self._site_seconds += sum(r.metrics.get("site-seconds", 0.0) for r in reports)
        self._file.flush()
        if self._wandb is not None and logged:
            self._wandb.log(logged, step=server_round)

    def central(self, server_round: int, metrics: dict[str, float]) -> None:
        """The server's own figures for a round (central evaluation, timing, central epsilon)."""
        for metric, value in metrics.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self._round(server_round).central[metric] = float(value)
                self._writer.writerow((server_round, "central", "server", "ok", "", metric, value))
        self._file.flush()
        if self._wandb is not None:
            self._wandb.log({f"central/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))},
                            step=server_round)

    def round_timing(self, server_round: int, seconds: float) -> None:
        """A round's wall time beside what the sites spent, summed over sites.

        `sites-train-seconds` is local training; `sites-seconds` is the sites' whole work on the messages
        answered in the interval (training, their validation and test evaluation, reading the model and data);
        the rest of `round-seconds` is the framework: messaging, aggregation, checkpointing.
        """
        trained = self._train_seconds.pop(server_round, 0.0)
        busy, self._site_seconds = self._site_seconds, 0.0
        self.central(server_round, {"round-seconds": seconds, "sites-train-seconds": trained, "sites-seconds": busy})
        logger.info("round %d took %.1f s; the sites trained for %.1f s and worked for %.1f s in total",
                    server_round, seconds, trained, busy)

    def close(self) -> None:
        self._file.close()
        if self._wandb is not None:
            self._wandb.finish()


def _start_wandb(out_dir: Path, run_name: str, config: dict) -> Any:
    """Offline by default; never prompts for a login."""
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    try:
        import wandb
    except ImportError:
        logger.warning("wandb is not installed: metrics go to CSV only")
        return None
    return wandb.init(project="ossifl", name=run_name, dir=str(out_dir), config=config, reinit=True)
