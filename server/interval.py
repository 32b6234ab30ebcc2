"""After the last round: the final model's prediction interval, fitted across the sites from their score counts.

The server sends every connected site the final shared arrays in a `query` message; each replies with counts of its
scores in fixed bins (`client.site_interval`), noisy when the site is private. The pooled interval, how it was
fitted and each site's own interval and test coverage go into the final checkpoint (`core.federated_conformal`).
A site that refuses (budget, no usable images) or does not answer in time is left out and listed.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from core.conformal import ConformalError
from core.federated_conformal import SiteCounts, fit_federated

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
    logger.info("federated %.0f%% interval from %d images of %d sites: +-%.1f months; pooled test coverage %.1f%%",
                coverage * 100, interval.n, len(sites), interval.halfwidth_months,
                100 * summary["pooled_test_coverage"])
    return {"conformal": interval.to_dict(), "conformal_federated": summary}
