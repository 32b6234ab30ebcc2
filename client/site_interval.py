"""A site's part in the federated prediction interval: counts of its scores in fixed bins, never a score per image.

The reply to the server's query after the last round (`server.interval`): the final model's absolute errors on the
site's calibration (val) and test splits, counted in `core.intervals.federated_conformal`'s bins (0.5 months; 2 at a
private site), with the sex given and with the sex from the sex head. A private site adds Gaussian noise (node
config `dp-interval-noise`, default 5 counts) and records the release in its privacy ledger before anything leaves;
past its budget it refuses.

The site also fits its own interval of the same model from its exact scores (the quantile of its own validation
split, and that interval's coverage of its test split) and keeps it in its state folder (`own_intervals.jsonl`),
never sending it: `python -m client predict --interval site` uses it for a site the pooled interval serves badly
(`own_interval` looks it up by the model's federation id and round).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.intervals.conformal import (ConformalInterval, conformal_quantile, has_sex_head, minimum_calibration_size,
                            predictions_of)
from core.data import BoneAgeDataset
from core.errors import UserError
from core.intervals.federated_conformal import BIN_MONTHS, PRIVATE_BIN_MONTHS, account_release, add_noise, score_counts
from core.predict.tta import TTAConfig
from core.privacy import LEDGER_FILENAME

logger = logging.getLogger("ossifl.client")

COUNT_KEYS = ("calibration-given", "calibration-head", "test-given", "test-head")
OWN_INTERVALS = "own_intervals.jsonl"
COVERAGE = 0.9


class NoOwnInterval(UserError):
    """The site kept no interval of its own for this model."""


def _scores(model: torch.nn.Module, dataset: BoneAgeDataset, device: torch.device, from_head: bool,
            tta: TTAConfig) -> np.ndarray:
    if len(dataset) == 0:
        return np.zeros(0)
    predicted, true = predictions_of(model, dataset, device, sex_from_head=from_head, tta=tta)
    return np.abs(true - predicted)


def _keep_own_interval(session: Any, scores: dict[str, np.ndarray | None]) -> None:
    """The site's own interval of this model from its exact scores, appended to its state folder (never sent)."""
    calibration, head = scores["calibration-given"], scores["calibration-head"]
    if len(calibration) < minimum_calibration_size(COVERAGE):
        logger.warning("site %s: %d validation images are too few for an interval of its own", session.site.site_id,
                       len(calibration))
        return
    halfwidth = conformal_quantile(calibration, COVERAGE)
    interval = ConformalInterval(COVERAGE, halfwidth, None if head is None else conformal_quantile(head, COVERAGE),
                                 len(calibration), "val", f"site {session.site.site_id} alone",
                                 "split conformal at the site, on the scores of its own validation split")
    test = scores["test-given"]
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "federation_id": session.federation_id,
             "round": session.round, "interval": interval.to_dict(), "test_images": len(test),
             "test_coverage": float(np.mean(test <= halfwidth)) if len(test) else None}
    session.site.state_dir.mkdir(parents=True, exist_ok=True)
    with open(session.site.state_dir / OWN_INTERVALS, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry, sort_keys=True) + "\n")


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
    scores = {}
    for split, dataset in (("calibration", val), ("test", test)):
        scores[f"{split}-given"] = _scores(model, dataset, device, False, session.inputs.tta)
        scores[f"{split}-head"] = _scores(model, dataset, device, True, session.inputs.tta) if head else None
    _keep_own_interval(session, scores)
    width = PRIVATE_BIN_MONTHS if site.dp.enabled else BIN_MONTHS  # noise per bin: a private site's bins are wider
    counts = {k: None if v is None else score_counts(v, width) for k, v in scores.items()}
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


def own_interval(state_dir: Path | None, metadata: dict[str, Any]) -> tuple[ConformalInterval, str]:
    """The interval this site kept for a federated model (the latest for its federation id and round) and a line
    saying what it is.

    Raises:
        NoOwnInterval: no state folder, a model that is not a federation's, or none kept for it here.
    """
    if state_dir is None:
        raise NoOwnInterval("--interval site needs the site's state folder: give --site-config or --state-dir")
    federation_id, rounds = metadata.get("federation_id"), metadata.get("round")
    personalised = "personalised_for_site" in (metadata.get("provenance") or {})
    if (metadata.get("run_config") or {}).get("local-layers", "none") != "none" and not personalised:
        raise NoOwnInterval("this federation kept layers at the sites: the site's own interval is of its own model; "
                            "write that with `python -m client export` (it carries the site's interval)")
    kept = None
    path = Path(state_dir) / OWN_INTERVALS
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    for line in lines:
        entry = json.loads(line)
        if federation_id and entry.get("federation_id") == federation_id and entry.get("round") == rounds:
            kept = entry
    if kept is None:
        raise NoOwnInterval(f"this site ({state_dir}) kept no interval of its own for this model (only a federation's "
                            "final model has one, at the sites that fitted its interval); use --interval model, or "
                            "fit one with `python -m client calibrate`")
    interval = ConformalInterval.from_dict(kept["interval"])
    covered = kept.get("test_coverage")
    note = (f"this site's own: {interval.n} validation images, fitted {kept['time']}"
            + ("" if covered is None else f"; it held {covered:.1%} of the site's {kept['test_images']} test images"))
    return interval, note
