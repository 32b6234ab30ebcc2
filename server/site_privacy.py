"""The server's own record of every private site's spending, a second ledger the site cannot edit.

Each private site reports its cumulative epsilon (from its own ledger) with every train reply. The
server keeps, per site, the largest epsilon and the smallest delta it has seen, in the run's
per-round checkpoint (so it survives a resume), and rejects a reply that:

- reports less than the server already saw (the site's ledger was reset, cut or edited),
- reports a larger delta than before (a larger delta buys a smaller epsilon),
- trains without privacy after private rounds in the same run (the DP settings were removed),
- reports a private round with a negative, zero or non-finite epsilon.

A rejected reply is not aggregated; its epsilon still counts as seen. What this cannot see: a site
that was never private in this run, spending in other runs, and a site whose node id changes when
it reports no `site-id` (see docs/privacy.md).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

logger = logging.getLogger("ossifl.server")

_TOLERANCE = 1e-9  # relative: the same history gives the same epsilon; anything lower is a smaller history


@dataclass
class SiteSpending:
    """What the server saw of one private site: its largest epsilon, smallest delta and when."""

    epsilon: float
    delta: float
    round: int


class SitePrivacyRecord:
    """Every private site's reported spending in this run, and the check of each new train reply."""

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        self.sites: dict[str, SiteSpending] = {site: SiteSpending(**values) for site, values in (state or {}).items()}

    def check(self, site: str, server_round: int, metrics: dict[str, float]) -> str:
        """The reason to reject this train reply ("" to accept it); the reported spending is recorded either way."""
        private = float(metrics.get("private", 0.0)) > 0
        epsilon, delta = float(metrics.get("epsilon", 0.0)), float(metrics.get("delta", 0.0))
        seen = self.sites.get(site)
        if not private:
            if seen is None:
                return ""
            return (f"site {site} trained privately up to round {seen.round} (epsilon {seen.epsilon:.4g}) but now "
                    f"trained without privacy: its DP settings were removed; update not used")
        if not (math.isfinite(epsilon) and epsilon > 0 and math.isfinite(delta) and 0 < delta < 1):
            return f"site {site} reports a private round with epsilon {epsilon} at delta {delta}: not a guarantee"
        reason = ""
        if seen is not None and epsilon < seen.epsilon * (1 - _TOLERANCE):
            reason = (f"site {site} reports epsilon {epsilon:.4g}, below the {seen.epsilon:.4g} the server recorded "
                      f"in round {seen.round}: its privacy ledger was reset or edited; update not used")
        elif seen is not None and delta > seen.delta:
            reason = (f"site {site} reports delta {delta:.3g}, above the {seen.delta:.3g} of its earlier rounds "
                      f"(a larger delta lowers epsilon); update not used")
        if seen is None or epsilon > seen.epsilon:
            self.sites[site] = SiteSpending(epsilon, delta if seen is None else min(delta, seen.delta), server_round)
        if reason:
            logger.error("privacy: %s", reason)
        return reason

    def state_dict(self) -> dict[str, Any]:
        """Plain values for the run's checkpoint metadata."""
        return {site: asdict(spending) for site, spending in self.sites.items()}
