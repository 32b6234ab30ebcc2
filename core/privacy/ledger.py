"""The privacy ledger: an append-only record of every private training segment of a site.

One JSON object per line in `<state_dir>/privacy_ledger.jsonl`::

    {"time": "2025-01-01T12:00:00+00:00", "noise_multiplier": 1.1, "sample_rate": 0.032,
     "steps": 31, "delta": 1e-05, "run_id": "...", "round": 3, "prev": "<sha256>", "sha256": "<sha256>"}

`noise_multiplier`, `sample_rate` and `steps` define the subsampled Gaussian mechanism that was
run; everything else is context for people. The cumulative epsilon is recomputed from the whole
history by an Opacus accountant, so it survives restarts and new federations: it never resets.
A line that cannot be read is an error, never skipped: dropping it would under-report epsilon.

The ledger is tamper-evident, not tamper-proof: `prev` is the SHA-256 of the previous line as
written ("" on the first line) and `sha256` that of the entry itself, so an edited, removed or
reordered line is an error before any training. Whoever rewrites the whole chain, or cuts lines
off its end, is not caught here: the site's audit log (`core.privacy.guard`) and the server's own
record of the site's epsilon are the checks for that. Lines written before the chain existed
(no `prev`, no `sha256`) are read as a leading, unchained part of the history.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import stat
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
_CHAIN_KEYS = ("prev", "sha256")


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
        """Every segment recorded so far, oldest first (empty when the file does not exist).

        Raises `LedgerError` for a file that is not a regular file, a damaged line or a broken chain.
        """
        return [entry for entry, _ in self._read()]

    def record(self, noise_multiplier: float, sample_rate: float, steps: int, **context: Any) -> None:
        """Append one segment, chained to the last line, and force it to disk before returning."""
        history = self._read()
        entry = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "noise_multiplier": float(noise_multiplier), "sample_rate": float(sample_rate),
                 "steps": int(steps), **{k: v for k, v in context.items() if k not in _CHAIN_KEYS},
                 "prev": _digest(history[-1][1]) if history else ""}
        self._validate(entry, "the new entry")
        entry["sha256"] = _entry_digest(entry)
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

    def _read(self) -> list[tuple[LedgerEntry, str]]:
        """(entry, its line as written) for every line, with the chain checked."""
        require_regular_file(self.path, f"privacy ledger {self.path.name}")
        if not self.path.exists():
            return []
        read: list[tuple[LedgerEntry, str]] = []
        chained = False
        with self.path.open("r", encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                text = line.rstrip("\r\n")
                if not text.strip():
                    continue
                where = f"privacy ledger {self.path.name} line {number}"
                values = self._load(where, text)
                chained = self._check_chain(where, values, read[-1][1] if read else None, chained)
                read.append((self._parse(values), text))
        return read

    @staticmethod
    def _load(where: str, text: str) -> dict[str, Any]:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LedgerError(f"{where} is not valid JSON ({exc.msg}); fix or restore the file, "
                              f"never delete lines: epsilon would be under-reported") from None
        PrivacyLedger._validate(values, where)
        return values

    @staticmethod
    def _check_chain(where: str, values: dict[str, Any], previous: str | None, chained: bool) -> bool:
        """Check the line's own digest and its link to the previous line; return whether the chain has begun."""
        if not any(key in values for key in _CHAIN_KEYS):
            if chained:
                raise LedgerError(f"{where} has no chain fields after chained lines: it was edited or inserted; "
                                  f"restore the file from a backup")
            return False
        try:
            own = _entry_digest({k: v for k, v in values.items() if k != "sha256"})
        except ValueError:  # NaN or Infinity somewhere in the line: `record` never writes one
            own = None
        if values.get("sha256") != own:
            raise LedgerError(f"{where} does not match its own checksum: it was edited; "
                              f"restore the file from a backup, never edit the ledger")
        expected = "" if previous is None else _digest(previous)
        if values.get("prev") != expected:
            raise LedgerError(f"{where} does not follow the line before it: lines were removed, reordered or "
                              f"edited; restore the file from a backup")
        return True

    @staticmethod
    def _parse(values: dict[str, Any]) -> LedgerEntry:
        context = {k: v for k, v in values.items() if k not in (*_MECHANISM_KEYS, *_CHAIN_KEYS, "time")}
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
    epsilon = float(engine.get_epsilon(delta=delta))
    if not (math.isfinite(epsilon) and epsilon >= 0):  # e.g. a delta near 1: the bound says nothing
        raise ConfigError(f"privacy accounting gives epsilon {epsilon:.4g} at delta {delta:.3g}: no meaningful "
                          f"guarantee; use a delta well below 1/N and a noise multiplier near 1 or above")
    return epsilon


def require_regular_file(path: Path, what: str) -> None:
    """Raise `LedgerError` when `path` exists (or is a link) but is not a regular file; the message names no path.

    A folder, a device (/dev/zero would be read forever), a pipe or a dangling link is never a ledger.
    """
    if not path.is_symlink() and not path.exists():
        return
    try:
        mode = path.stat().st_mode
    except OSError:
        raise LedgerError(f"{what} is a link that points nowhere; restore the site's file from a backup") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a device, pipe or socket"
        link = "a link to " if path.is_symlink() else ""
        raise LedgerError(f"{what} is {link}{kind}, not a regular file: refusing to read or write it; "
                          f"restore the site's file from a backup")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _entry_digest(values: dict[str, Any]) -> str:
    """SHA-256 of an entry without its own digest, in a canonical form (sorted keys, Python's float repr)."""
    return _digest(json.dumps(values, sort_keys=True, allow_nan=False))
