"""A site's part in the federated prediction interval: counts of its scores in fixed bins, never a score per image.

The reply to the server's query after the last round (`server.interval`): the final model's absolute errors on the
site's calibration (val) and test splits, counted in `core.federated_conformal`'s bins, with the sex given and with
the sex from the sex head. A private site adds Gaussian noise (node config `dp-interval-noise`, default 5 counts)
and records the release in its privacy ledger before anything leaves; past its budget it refuses.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from core.conformal import has_sex_head, predictions_of
from core.data import BoneAgeDataset
from core.federated_conformal import N_BINS, account_release, add_noise, score_counts
from core.privacy import LEDGER_FILENAME

logger = logging.getLogger("ossifl.client")

COUNT_KEYS = ("calibration-given", "calibration-head", "test-given", "test-head")


def _counts(model: torch.nn.Module, dataset: BoneAgeDataset, device: torch.device, from_head: bool) -> np.ndarray:
    if len(dataset) == 0:
        return np.zeros(N_BINS)
    predicted, true = predictions_of(model, dataset, device, sex_from_head=from_head)
    return score_counts(np.abs(true - predicted))


def interval_counts(session: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The metrics of the reply: the four count vectors (head ones empty without a sex head), the noise added,
    epsilon after the release and its delta (0 for a site without DP; the audit log keeps them, so the ledger is
    checked against them later) and the site id."""
    site, model, device = session.site, session.model, session.device
    # the splits as training and evaluation decoded them (their cached files: nothing is decoded a third time);
    # augmentation applies to the training split only
    val = session.load_data(augment=True, splits=("train", "val")).val
    test = session.load_data(augment=False, splits=("test",)).test
    head = has_sex_head(model)
    counts = {}
    for split, dataset in (("calibration", val), ("test", test)):
        counts[f"{split}-given"] = _counts(model, dataset, device, False)
        counts[f"{split}-head"] = _counts(model, dataset, device, True) if head else None
    sigma, epsilon, delta = 0.0, 0.0, 0.0
    if site.dp.enabled:
        sigma = site.dp.interval_noise
        epsilon, delta = account_release(site.state_dir / LEDGER_FILENAME, site.dp, sigma, len(val) + len(test))
        rng = np.random.default_rng(None if site.dp.seed is None else [site.dp.seed, 25])
        counts = {k: None if v is None else add_noise(v, sigma, rng) for k, v in counts.items()}
    logger.info("site %s: interval score counts of %d calibration and %d test images%s", site.site_id,
                len(val), len(test), f", noise sigma {sigma:g}, epsilon {epsilon:.3f}" if sigma else "")
    metrics: dict[str, Any] = {key: [] if counts[key] is None else [float(c) for c in counts[key]]
                               for key in COUNT_KEYS}
    metrics.update({"noise-sigma": float(sigma), "epsilon": float(epsilon), "delta": float(delta),
                    "site-id": session.numeric_site_id})
    return {}, metrics
