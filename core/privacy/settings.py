"""The noise and delta a site keeps for its whole life, stored next to its privacy ledger.

The first private round fixes sigma (given, or chosen to spend the site's target epsilon over
the planned rounds) and delta; later rounds, restarts and new federations reuse them, so a
budget is not re-spread every round. A change of target, plan, accountant or delta re-chooses
sigma for the budget that is left, with a warning.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from core.privacy.config import DPConfig, default_delta
from core.errors import ConfigError
from core.privacy.ledger import BudgetExceeded, LedgerError, PrivacyLedger, require_regular_file

logger = logging.getLogger(__name__)

SETTINGS_FILENAME = "privacy_settings.json"
_SIGMA_CEILING = 1e4
_SEARCH_STEPS = 40


@dataclass(frozen=True)
class SiteNoise:
    """Sigma and delta of a site, and what they were chosen for."""

    noise_multiplier: float
    delta: float
    target_epsilon: float | None
    planned_rounds: int
    accountant: str

    def same_plan(self, other: "SiteNoise") -> bool:
        return (self.delta, self.target_epsilon, self.planned_rounds, self.accountant) == (
            other.delta, other.target_epsilon, other.planned_rounds, other.accountant)


def settings_path(ledger: PrivacyLedger) -> Path:
    return ledger.path.with_name(SETTINGS_FILENAME)


def load_site_noise(path: Path) -> SiteNoise | None:
    require_regular_file(path, f"privacy settings {path.name}")
    if not path.exists():
        return None
    try:
        return SiteNoise(**json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError) as exc:
        raise LedgerError(f"privacy settings {path.name} cannot be read ({exc}); "
                          f"delete it to choose sigma again") from None


def resolve_site_noise(dp: DPConfig, ledger: PrivacyLedger, sample_rate: float, steps: int, num_examples: int,
                       planned_rounds: int) -> SiteNoise:
    """Sigma and delta for this round: the stored ones when the plan is unchanged, else chosen now.

    Nothing is written: `save_site_noise` keeps the choice once a round has been recorded with it.
    """
    path = settings_path(ledger)
    stored = load_site_noise(path)
    delta = dp.delta or (stored.delta if stored is not None else default_delta(num_examples))
    if delta >= 1.0 / num_examples:
        raise ConfigError(f"dp delta {delta:.3g} is not below 1/N = {1.0 / num_examples:.3g} for this site's "
                          f"{num_examples} training images: the guarantee would allow publishing a whole record; "
                          f"leave dp-delta unset (here {default_delta(num_examples):.0e}) or set it well below 1/N")
    if dp.noise_multiplier is not None:
        chosen = SiteNoise(dp.noise_multiplier, delta, None, planned_rounds, dp.accountant)
    else:
        wanted = SiteNoise(0.0, delta, dp.target_epsilon, planned_rounds, dp.accountant)
        if stored is not None and stored.target_epsilon is not None and stored.same_plan(wanted):
            return stored
        if stored is not None:
            logger.warning("dp plan changed (%s -> %s): choosing sigma again for the budget left", stored, wanted)
        sigma = noise_for_budget(ledger, dp.target_epsilon, sample_rate, planned_rounds * steps, delta, dp.accountant)
        chosen = SiteNoise(sigma, delta, dp.target_epsilon, planned_rounds, dp.accountant)
        logger.info("dp: sigma %.4f spends epsilon %.3g over %d rounds of %d steps (q %.4g, delta %.3g)",
                    sigma, dp.target_epsilon, planned_rounds, steps, sample_rate, delta)
    return chosen


def save_site_noise(ledger: PrivacyLedger, noise: SiteNoise) -> None:
    """Keep `noise` for the site's later rounds (its existence also says the site trained privately)."""
    path = settings_path(ledger)
    if load_site_noise(path) != noise:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(noise), indent=1) + "\n", encoding="utf-8")


def noise_for_budget(ledger: PrivacyLedger, target_epsilon: float, sample_rate: float, steps: int, delta: float,
                     accountant: str = "rdp") -> float:
    """Smallest sigma (to 0.1 %) whose `steps` steps take the ledger's epsilon to at most `target_epsilon`.

    With an empty ledger this is Opacus' `get_noise_multiplier`; unlike it, it counts what the site
    has already spent.
    """
    def fits(sigma: float) -> bool:
        return ledger.projected_epsilon(sigma, sample_rate, steps, delta, accountant) <= target_epsilon

    high = 1.0
    while not fits(high):
        high *= 2.0
        if high > _SIGMA_CEILING:
            current = ledger.epsilon(delta, accountant)
            raise BudgetExceeded(current, ledger.projected_epsilon(high, sample_rate, steps, delta, accountant),
                                 target_epsilon)
    low = 0.0
    for _ in range(_SEARCH_STEPS):
        if high - low <= 1e-3 * high:
            break
        middle = 0.5 * (low + high)
        low, high = (low, middle) if fits(middle) else (middle, high)
    return high
