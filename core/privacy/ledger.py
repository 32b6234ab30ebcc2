"""The privacy ledger: an append-only record of every private training segment of a site.

One JSON object per line in `<state_dir>/privacy_ledger.jsonl`::

    {"time": "2025-01-01T12:00:00+00:00", "noise_multiplier": 1.1, "sample_rate": 0.032,
     "steps": 31, "delta": 1e-05, "run_id": "...", "round": 3}

`noise_multiplier`, `sample_rate` and `steps` define the subsampled Gaussian mechanism that was
run; everything else is context for people. The cumulative epsilon is recomputed from the whole
history by an Opacus accountant, so it survives restarts and new federations: it never resets.
A line that cannot be read is an error, never skipped: dropping it would under-report epsilon.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from core.errors import ConfigError, UserError
from core.privacy.config import ACCOUNTANTS

logger = logging.getLogger(__name__)

LEDGER_FILENAME = "privacy_ledger.jsonl"
_MECHANISM_KEYS = ("noise_multiplier", "sample_rate", "steps")
_MAX_STEPS = 10**9  # more noised steps than any site takes; a larger count is damage, and would stall the accountant


class LedgerError(UserError, ValueError):
    """A ledger that cannot be trusted (unreadable, damaged or missing); the message names no local path."""


class BudgetExceeded(UserError):
    """A round would take the site past its privacy budget; nothing was trained or recorded."""

    def __init__(self, current: float, projected: float, budget: float) -> None:
        super().__init__(
            f"round would raise epsilon from {current:.4g} to {projected:.4g}, above the budget {budget:.4g}"
        )
        self.current, self.projected, self.budget = current, projected, budget


@dataclass(frozen=True)
class LedgerEntry:
    """One private training segment: `steps` steps of noise `noise_multiplier` at `sample_rate`."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    time: str = ""
    context: dict[str, Any] = field(default_factory=dict)

    @property
    def mechanism(self) -> tuple[float, float, int]:
        return (self.noise_multiplier, self.sample_rate, self.steps)


class PrivacyLedger:
    """Append-only JSON-lines ledger of a site's private training, and its cumulative epsilon."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def entries(self) -> list[LedgerEntry]:
        """Every segment recorded so far, oldest first (empty when the file does not exist)."""
        if not self.path.exists():
            return []
        with self.path.open("r", encoding="utf-8") as handle:
            return [self._parse(number, line) for number, line in enumerate(handle, start=1) if line.strip()]

    def record(self, noise_multiplier: float, sample_rate: float, steps: int, **context: Any) -> None:
        """Append one segment and force it to disk before returning."""
        entry = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "noise_multiplier": float(noise_multiplier), "sample_rate": float(sample_rate),
                 "steps": int(steps), **context}
        self._validate(entry, "the new entry")
        line = json.dumps(entry, sort_keys=False, allow_nan=False) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        logger.info("privacy ledger %s: recorded sigma %.4g, q %.4g, %d steps", self.path,
                    noise_multiplier, sample_rate, steps)

    def epsilon(self, delta: float, accountant: str = "rdp") -> float:
        """Cumulative epsilon at `delta` of everything recorded (0.0 when nothing is)."""
        return history_epsilon([e.mechanism for e in self.entries()], delta, accountant)

    def projected_epsilon(self, noise_multiplier: float, sample_rate: float, steps: int, delta: float,
                          accountant: str = "rdp") -> float:
        """Cumulative epsilon if a segment of `steps` steps were added to the history."""
        history = [e.mechanism for e in self.entries()] + [(noise_multiplier, sample_rate, int(steps))]
        return history_epsilon(history, delta, accountant)

    def _parse(self, number: int, line: str) -> LedgerEntry:
        where = f"privacy ledger {self.path.name} line {number}"
        try:
            values = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LedgerError(f"{where} is not valid JSON ({exc.msg}); fix or restore the file, "
                              f"never delete lines: epsilon would be under-reported") from None
        self._validate(values, where)
        context = {k: v for k, v in values.items() if k not in (*_MECHANISM_KEYS, "time")}
        return LedgerEntry(float(values["noise_multiplier"]), float(values["sample_rate"]), int(values["steps"]),
                           str(values.get("time", "")), context)

    @staticmethod
    def _validate(values: Any, where: str) -> None:
        if not isinstance(values, dict) or any(key not in values for key in _MECHANISM_KEYS):
            raise LedgerError(f"{where} lacks one of {', '.join(_MECHANISM_KEYS)}")
        sigma, rate, steps = (values[key] for key in _MECHANISM_KEYS)
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                      for v in (sigma, rate, steps))
        if not numbers or not (sigma > 0 and 0 < rate <= 1 and 0 <= steps <= _MAX_STEPS
                               and float(steps).is_integer()):
            raise LedgerError(f"{where} is damaged: impossible mechanism sigma {sigma!r}, q {rate!r}, steps {steps!r}; "
                              f"restore the file from a backup, never edit or delete lines")


def history_epsilon(history: list[tuple[float, float, int]], delta: float, accountant: str = "rdp") -> float:
    """Epsilon at `delta` of a composition of (sigma, q, steps) subsampled Gaussian segments."""
    if accountant not in ACCOUNTANTS:
        raise ConfigError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
    merged: dict[tuple[float, float], int] = {}
    for sigma, rate, steps in history:  # composition is commutative: one term per (sigma, q)
        if steps > 0:
            merged[(sigma, rate)] = merged.get((sigma, rate), 0) + int(steps)
    if not merged:
        return 0.0
    from opacus.accountants import PRVAccountant, RDPAccountant  # imported here: opacus takes ~1.7 s to import

    engine = RDPAccountant() if accountant == "rdp" else PRVAccountant()
    engine.history = [(sigma, rate, steps) for (sigma, rate), steps in merged.items()]
    return float(engine.get_epsilon(delta=delta))
