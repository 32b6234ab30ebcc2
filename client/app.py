"""The Flower ClientApp a hospital runs: fine-tunes the unfrozen blocks on its private data.

Only model arrays and aggregate metrics leave the site; every reply is written to the site's
audit log. Settings come from the node config (see `client.config.SiteConfig`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from flwr.app import ArrayRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.audit import app_identity, append_audit, update_digest
from client.config import SiteConfig
from client.site import SITE_ERRORS, SiteSession
from client.site_interval import interval_counts

logger = logging.getLogger("ossifl.client")
app = ClientApp()

REFUSED = 4100  # error code of a reply the site refuses on purpose (budget, data, model mismatch)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Fine-tune on the site's training split; reply with the trained arrays and metrics."""
    return _reply(msg, context, "train", lambda session: session.train())


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global model on the site's test split."""
    return _reply(msg, context, "evaluate", lambda session: session.evaluate())


@app.query()
def query(msg: Message, context: Context) -> Message:
    """After the last round: counts of the final model's scores for the federated prediction interval."""
    return _reply(msg, context, "query", interval_counts)


def _reply(msg: Message, context: Context, kind: str, work: Callable[[SiteSession], tuple]) -> Message:
    start = time.perf_counter()
    server_config = msg.content["config"]
    try:
        site = SiteConfig.from_node_config(context.node_config, str(server_config.get("pretrained", "")))
        session = SiteSession(site, msg.content["arrays"].to_torch_state_dict(), server_config, context.state,
                             msg.metadata.run_id)
        arrays, metrics = work(session)
    except SITE_ERRORS as exc:
        logger.error("site refused the %s request: %s", kind, exc)
        return Message(Error(code=REFUSED, reason=f"{exc.__class__.__name__}: {exc}"), reply_to=msg)
    metrics["site-seconds"] = time.perf_counter() - start  # the whole message at the site, training included
    content = RecordDict({"metrics": MetricRecord(metrics)})
    numpy_arrays = {key: value.detach().cpu().numpy() for key, value in arrays.items()}
    if kind == "train":
        content["arrays"] = ArrayRecord(arrays)
    nbytes, digest = update_digest(numpy_arrays) if kind == "train" else (0, "")
    append_audit(site.state_dir, {
        "kind": kind, "run_id": msg.metadata.run_id, "round": int(server_config.get("server-round", 0)),
        "app": app_identity(),
        "message_id": msg.metadata.message_id, "array_keys": list(numpy_arrays) if kind == "train" else [],
        "bytes": nbytes, "sha256": digest, "metrics": metrics, "epsilon": metrics.get("epsilon"),
    })
    return Message(content=content, reply_to=msg)
