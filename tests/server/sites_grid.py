"""A grid that answers each message in-process, for whole federations without Flower's engine."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Error, Message, MetricRecord, RecordDict


class SitesGrid:
    """Two sites that answer at once: a training message with its arrays plus one (integers stay integers), an
    evaluation with a MAD; from round `fail_from` on (counted over resumes) every site answers with an error."""

    def __init__(self, fail_from: int = 10**6) -> None:
        self.fail_from = fail_from
        self.sent: list[tuple[str, dict]] = []  # (message type, its config as sent: the record is reused)
        self.timeouts: list[float | None] = []  # the timeout of every send_and_receive

    def get_node_ids(self) -> list[int]:
        return [1, 2]

    def send_and_receive(self, messages: list[Message], *, timeout: float | None = None) -> list[Message]:
        self.timeouts.append(timeout)
        replies = []
        for msg in messages:
            self.sent.append((msg.metadata.message_type, dict(msg.content["config"])))
            if int(msg.content["config"]["server-round"]) >= self.fail_from:
                replies.append(Message(Error(code=0, reason="site offline"), reply_to=msg))
                continue
            content = {"metrics": MetricRecord({"num-examples": 4, "site-id": msg.metadata.dst_node_id,
                                                "mad-months": 10.0})}
            if msg.metadata.message_type.startswith("train"):
                content["arrays"] = ArrayRecord({k: Array(a.numpy() + np.ones(1, a.numpy().dtype))
                                                 for k, a in msg.content["arrays"].items()})
            replies.append(Message(RecordDict(content), reply_to=msg))
        return replies

    def rounds(self, kind: str = "train") -> list[int]:
        return [int(config["server-round"]) for sent, config in self.sent if sent.startswith(kind)]
