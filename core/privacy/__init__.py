"""Sample-level differential privacy for a site: settings, the privacy ledger, private rounds."""

from core.privacy.config import ACCOUNTANTS, DPConfig, default_delta
from core.privacy.ledger import LEDGER_FILENAME, BudgetExceeded, LedgerEntry, LedgerError, PrivacyLedger
from core.privacy.settings import SiteNoise, noise_for_budget
from core.privacy.training import DPIncompatibleModel, PrivateRoundResult, check_dp_compatible, train_private_round

__all__ = [
    "ACCOUNTANTS", "BudgetExceeded", "DPConfig", "DPIncompatibleModel", "LEDGER_FILENAME", "LedgerEntry",
    "LedgerError", "PrivacyLedger", "PrivateRoundResult", "SiteNoise", "check_dp_compatible", "default_delta",
    "noise_for_budget", "train_private_round",
]
