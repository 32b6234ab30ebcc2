"""After the last round: the final model's prediction interval, fitted across the sites from their score counts.

The server sends every connected site the final shared arrays in a `query` message; each replies with counts of its
scores in fixed bins (`client.site_interval`), noisy when the site is private. The pooled interval, how it was
fitted and each site's own interval and test coverage go into the final checkpoint (`core.intervals.federated_conformal`).
A site that refuses (budget, no usable images) or does not answer in time is left out and listed.

`refit_interval` does only this step for a federation's existing final model (run config `interval-from`): the
same query, with the federation's id (so FedBN sites score with their own layers), round and settings, and the
model written again to `out-dir` with the new interval; the input file is never changed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from core.checkpoint import Checkpoint, file_sha256, load_checkpoint, save_checkpoint
from core.intervals.conformal import ConformalError
from core.errors import ConfigError
from core.intervals.federated_conformal import SiteCounts, fit_federated
from core.model.groups import parameter_groups
from core.round_settings import RoundSettings
from server.config import FederationConfig
from server.outcome import FederationOutcome

logger = logging.getLogger("ossifl.server")


def _site_counts(reply: Message) -> SiteCounts:
    metrics = reply.content["metrics"]
    site_id = int(metrics["site-id"])
    name = str(site_id) if site_id >= 0 else f"node {reply.metadata.src_node_id}"

    def vector(key: str) -> np.ndarray | None:
        values = list(metrics[key])
        return np.asarray(values, dtype=np.float64) if values else None

    return SiteCounts(name, vector("calibration-given"), vector("test-given"), vector("calibration-head"),
                      vector("test-head"), float(metrics["noise-sigma"]))


def federated_interval(grid: Grid, arrays: ArrayRecord, config: ConfigRecord, timeout: float,
                       coverage: float = 0.9) -> dict[str, Any]:
    """{"conformal": ..., "conformal_federated": ...} for the final checkpoint's metadata; without "conformal"
    (and a warning) when the sites' counts cannot give one."""
    nodes = list(grid.get_node_ids())
    messages = [Message(content=RecordDict({"arrays": arrays, "config": config}), dst_node_id=node,
                        message_type=MessageType.QUERY) for node in nodes]
    sites, refused = [], {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_error():
            refused[str(reply.metadata.src_node_id)] = reply.error.reason
            continue
        sites.append(_site_counts(reply))
    try:
        interval, summary = fit_federated(sites, coverage)
    except ConformalError as exc:
        logger.warning("no federated prediction interval: %s", exc)
        return {"conformal_federated": {"error": str(exc), "refused": refused}}
    summary["refused"] = refused
    if summary["noise_dominated"]:
        logger.warning("the private sites' noise adds about %.0f counts to the scores of about %d (sd %.0f) "
                       "calibration images, more than the %.0f%% tail the interval is read from: the interval "
                       "(+-%.0f months) is set by the noise, not the model; it needs about %.0f calibration images at "
                       "this noise, or a smaller dp-interval-noise", summary["noise_counts_added"], interval.n,
                       summary["calibration_images_sd"], 100 * (1 - coverage), interval.halfwidth_months,
                       summary["noise_counts_added"] / (1 - coverage))
    logger.info("federated %.0f%% interval from %d images of %d sites: +-%.1f months; pooled test coverage %.1f%%%s",
                coverage * 100, interval.n, len(sites), interval.halfwidth_months,
                100 * summary["pooled_test_coverage"], " (from noisy counts)" if summary["private_sites"] else "")
    return {"conformal": interval.to_dict(), "conformal_federated": summary}


# The recorded run config keys a site needs to rebuild the final model as the federation left it.
SITE_SETTINGS = ("freeze", "local-layers", "seed", "num-rounds")


@dataclass(frozen=True)
class IntervalRefit:
    """What `refit_interval` sends and writes, checked before any site is asked (`IntervalRefit.of`)."""

    checkpoint: Checkpoint
    source: Path
    out: Path
    site_config: ConfigRecord
    keys: tuple[str, ...]

    @property
    def round(self) -> int:
        return int(self.checkpoint.metadata["round"])

    @classmethod
    def of(cls, config: FederationConfig, final_name: str) -> "IntervalRefit":
        """
        Raises:
            CheckpointError: `interval-from` does not load.
            ConfigError: it is not a federation's final model, was not federated from `config.pretrained`, or
                `out-dir` would overwrite it.
        """
        source = Path(config.interval_from)
        checkpoint = load_checkpoint(source)
        meta = checkpoint.metadata
        recorded, federation_id = meta.get("run_config"), meta.get("federation_id")
        if not recorded or not federation_id or "round" not in meta:
            raise ConfigError(f"{source} is not a federation's final model (no run config, federation id or "
                              "round); a site fits the interval of any other model with `python -m client calibrate`")
        sha256 = file_sha256(config.pretrained)
        if meta.get("pretrained_sha256") not in (None, sha256):
            raise ConfigError(f"{source} was not federated from {config.pretrained} (SHA-256 differs); pass the "
                              f"pretrained model it records ({meta.get('pretrained')})")
        out = config.out_dir / final_name
        if out.resolve() == source.resolve():
            raise ConfigError(f"out-dir {config.out_dir} would overwrite {source}: choose another out-dir")
        settings = RoundSettings.from_config({k: recorded[k] for k in SITE_SETTINGS if k in recorded})
        settings = replace(settings, pretrained=str(config.pretrained), pretrained_sha256=sha256)
        site_config = ConfigRecord({**settings.to_config(), "federation-id": str(federation_id),
                                    "server-round": int(meta["round"])})
        keys = parameter_groups(checkpoint.model, settings.freeze, settings.local_layers).shared
        return cls(checkpoint, source, out, site_config, keys)


def refit_interval(grid: Grid, config: FederationConfig, final_name: str) -> FederationOutcome:
    """Fit the interval of the federated model `config.interval_from` across the connected sites (as the run left
    them: its round, settings and federation id) and write the model with it to `config.out_dir / final_name`.
    No round is trained; a run whose sites give no interval fails without writing anything."""
    refit = IntervalRefit.of(config, final_name)
    deadline = time.monotonic() + config.timeout
    while len(list(grid.get_node_ids())) < config.min_nodes and time.monotonic() < deadline:
        time.sleep(1.0)  # the sites that connect in time (min-nodes) are asked, as a round would wait for them
    state = refit.checkpoint.model.state_dict()
    logger.info("fitting the interval of %s (round %d) across the sites", refit.source, refit.round)
    fitted = federated_interval(grid, ArrayRecord({k: state[k] for k in refit.keys}), refit.site_config,
                                config.timeout)
    applied = config.describe()
    if "conformal" not in fitted:
        failure = f"no interval for {refit.source}: {fitted['conformal_federated']['error']}"
        logger.error("%s", failure)
        return FederationOutcome(None, refit.round, list(refit.keys), 0, applied, failure=failure)
    kept = {k: v for k, v in refit.checkpoint.metadata.items() if k not in ("conformal", "conformal_federated")}
    provenance = {"path": str(refit.source), "sha256": file_sha256(refit.source)}
    save_checkpoint(refit.out, refit.checkpoint.model, {**kept, **fitted, "interval_from": provenance})
    logger.info("%s: the model of %s with its federated interval", refit.out, refit.source)
    return FederationOutcome(refit.out, refit.round, list(refit.keys), 0, applied)
