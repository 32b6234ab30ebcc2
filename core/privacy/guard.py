"""What keeps a site's privacy ledger honest when people or programs misuse its state folder.

- `site_lock`: one private round at a time per state folder. The lock is held over the budget
  check, the training and the record, so two runs on one site cannot both pass the check and
  together exceed the budget. A second run is refused at once rather than queued: a queued round
  would train on a budget the first one is about to spend.
- `require_history`: a ledger that is missing or empty while the state folder shows earlier
  private rounds (the site's noise settings, audit entries with an epsilon) was deleted or
  emptied; counting it as zero spent would let the site train past its budget. A ledger whose
  epsilon is below the largest the site itself reported in its audit log lost or changed lines
  (cut to its first line, a sigma raised): refused too. Both checks assume the audit log is
  intact; a site that rewrites every file of its state folder is caught only by the server's own
  record of what it reported (`server.site_privacy`).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core.privacy.ledger import LedgerError, PrivacyLedger, history_epsilon, require_regular_file
from core.privacy.settings import SETTINGS_FILENAME

logger = logging.getLogger(__name__)

LOCK_FILENAME = "privacy_ledger.lock"
AUDIT_FILENAME = "audit.jsonl"  # the site's audit log (client/audit.py), one JSON object per reply


class LedgerBusy(LedgerError):
    """Another private round holds the site's ledger."""


@contextmanager
def site_lock(ledger: PrivacyLedger) -> Iterator[None]:
    """Hold the site's ledger lock (an advisory `flock` next to the ledger) or raise `LedgerBusy` at once."""
    ledger.path.parent.mkdir(parents=True, exist_ok=True)
    require_regular_file(ledger.path.with_name(LOCK_FILENAME), f"privacy lock {LOCK_FILENAME}")
    descriptor = os.open(ledger.path.with_name(LOCK_FILENAME), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise LedgerBusy("another private round is running on this site's state folder; "
                                 "its privacy budget is spent one round at a time, try again when it ends") from None
            raise
        yield
    finally:
        os.close(descriptor)  # closing the descriptor releases the lock


def require_history(ledger: PrivacyLedger) -> None:
    """Raise `LedgerError` when the ledger accounts for less than the state folder shows the site spent.

    Missing or empty while the site's noise settings or audit entries with an epsilon exist; or an
    epsilon below the largest the site reported in its audit log (at that entry's delta).
    """
    audit = ledger.path.with_name(AUDIT_FILENAME)
    reported = _audited_private_replies(audit)
    entries = ledger.entries()
    if entries:
        _require_reported_spending(ledger.path.name, [entry.mechanism for entry in entries], reported)
        return
    evidence = []
    if ledger.path.with_name(SETTINGS_FILENAME).exists():
        evidence.append(SETTINGS_FILENAME)
    if reported:
        evidence.append(f"{len(reported)} audit entr{'y' if len(reported) == 1 else 'ies'} with an epsilon")
    if evidence:
        state = "missing" if not ledger.path.exists() else "empty"
        raise LedgerError(
            f"privacy ledger {ledger.path.name} is {state} but this site trained privately before "
            f"({', '.join(evidence)}): refusing to count its spent budget as zero; restore the ledger from a backup")


def _require_reported_spending(name: str, history: list[tuple[float, float, int]],
                               reported: list[tuple[float, float]]) -> None:
    """The ledger's epsilon (RDP, never below PRV's) must reach the largest epsilon the site ever reported."""
    usable = [(epsilon, delta) for epsilon, delta in reported if 0.0 < delta < 1.0]
    if not usable:
        return
    epsilon, delta = max(usable)
    accounted = history_epsilon(history, delta, "rdp")
    if accounted < epsilon * (1.0 - 1e-6):
        raise LedgerError(
            f"privacy ledger {name} accounts for epsilon {accounted:.4g} at delta {delta:.3g}, below the "
            f"{epsilon:.4g} this site reported earlier ({AUDIT_FILENAME}): lines were removed or changed; "
            f"restore the ledger from a backup")


def _audited_private_replies(path: Path) -> list[tuple[float, float]]:
    """(epsilon, delta) of every audit entry that reports an epsilon (lines that cannot be read count as none)."""
    require_regular_file(path, f"audit log {AUDIT_FILENAME}")
    if not path.exists():
        return []
    found: list[tuple[float, float]] = []
    with path.open("r", encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(entry, dict) and entry.get("epsilon") is not None:
                metrics = entry.get("metrics") if isinstance(entry.get("metrics"), dict) else {}
                found.append((_number(entry.get("epsilon")), _number(metrics.get("delta"))))
    return found


def _number(value: object) -> float:
    """A finite float, or 0.0 for anything else (an audit value that cannot be used as evidence of spending)."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0
    return number if math.isfinite(number) else 0.0
