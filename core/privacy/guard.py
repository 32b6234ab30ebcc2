"""What keeps a site's privacy ledger honest when people or programs misuse its state folder.

- `site_lock`: one private round at a time per state folder. The lock is held over the budget
  check, the training and the record, so two runs on one site cannot both pass the check and
  together exceed the budget. A second run is refused at once rather than queued: a queued round
  would train on a budget the first one is about to spend.
- `require_history`: a ledger that is missing or empty while the state folder shows earlier
  private rounds (the site's noise settings, audit entries with an epsilon) was deleted or
  emptied; counting it as zero spent would let the site train past its budget.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core.privacy.ledger import LedgerError, PrivacyLedger
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
    """Raise `LedgerError` when the ledger is missing or empty but the state folder shows private rounds."""
    if ledger.entries():
        return
    evidence = []
    if ledger.path.with_name(SETTINGS_FILENAME).exists():
        evidence.append(SETTINGS_FILENAME)
    audited = _audited_private_replies(ledger.path.with_name(AUDIT_FILENAME))
    if audited:
        evidence.append(f"{audited} audit entr{'y' if audited == 1 else 'ies'} with an epsilon")
    if evidence:
        state = "missing" if not ledger.path.exists() else "empty"
        raise LedgerError(
            f"privacy ledger {ledger.path.name} is {state} but this site trained privately before "
            f"({', '.join(evidence)}): refusing to count its spent budget as zero; restore the ledger from a backup")


def _audited_private_replies(path: Path) -> int:
    """Audit entries that report an epsilon (lines that cannot be read count as none)."""
    if not path.exists():
        return 0
    count = 0
    with path.open("r", encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(entry, dict) and entry.get("epsilon") is not None:
                count += 1
    return count
