"""A Flower strategy for partial models: per-key aggregation over the sites that trained each key.

Sites may freeze deeper than the run and return a subset of the arrays they received. Flower's own
strategies refuse such replies (InconsistentMessageReplies); this one validates each reply on its
own, rejects bad ones with a reason, and aggregates the rest with an `Aggregator`. A bad reply never
raises: it becomes a `SiteReport` with status "rejected" or "error", and a site that was sent a request
and did not answer within the run's timeout gets one with status "no-reply".

Replies are attributed to the node the request was sent to (its `reply_to_message_id`), not to the
reply's `src_node_id`: the SuperLink answers for a dead node with an error from node 1, itself.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from core.errors import UserError
from strategies.aggregation import Aggregator, SiteUpdate, build_aggregator, validate_update

logger = logging.getLogger(__name__)

SITE_ID_KEY = "site-id"
NO_REPLY = "no-reply"
NO_REPLY_REASON = "no reply within the run's timeout"


@dataclass
class SiteReport:
    """What the server learnt from one site in one round."""

    round: int
    node_id: int
    site: str
    status: str  # "ok" | "rejected" | "error" | "no-reply"
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    keys_returned: int = 0
    bytes_returned: int = 0


SiteReportsCallback = Callable[[str, int, list[SiteReport]], None]
ReplyCheck = Callable[[str, int, dict[str, float]], str]  # (site, round, metrics) -> reason to reject, or ""


class NoSiteTrained(UserError):
    """A train round in which no site's update could be used: the run fails rather than pass it off as trained."""


def scalar_metrics(record: MetricRecord) -> dict[str, float]:
    """The int/float entries of a MetricRecord (lists are left out)."""
    return {k: v for k, v in record.items() if isinstance(v, (int, float))}


def site_name(node_id: int, metrics: dict[str, float]) -> str:
    """metrics["site-id"] as an int string if the site sent a finite one >= 0 (a named site sends -1), else the
    node id."""
    value = metrics.get(SITE_ID_KEY)
    return str(int(value)) if value is not None and math.isfinite(value) and value >= 0 else str(node_id)


def weighted_mean_metrics(rows: list[tuple[dict[str, float], float]], skip: Iterable[str]) -> dict[str, float]:
    """Weighted mean of each metric over the rows (metrics, weight) that report it.

    A per-group metric `mad-<group>` is weighted by the same row's `n-<group>` instead (0 for a group
    the site suppressed, so it does not count); a metric nobody weighted is left out.
    """
    skipped = set(skip)
    totals: dict[str, float] = {}
    weights: dict[str, float] = {}
    for metrics, weight in rows:
        for key, value in metrics.items():
            if key in skipped:
                continue
            count = f"n-{key[len('mad-'):]}" if key.startswith("mad-") else ""
            own = float(metrics[count]) if count in metrics else weight
            totals[key] = totals.get(key, 0.0) + own * float(value)
            weights[key] = weights.get(key, 0.0) + own
    return {key: totals[key] / weights[key] for key in totals if weights[key] > 0}


def read_reply(
    node_id: int, content: RecordDict, weight_key: str, with_arrays: bool
) -> tuple[SiteReport, SiteUpdate | None]:
    """Decode one reply into a report (status "ok" or "rejected") and, if usable, an update.

    The update's arrays are empty when `with_arrays` is False (evaluation replies).
    """
    metric_records = list(content.metric_records.values())
    metrics = scalar_metrics(metric_records[0]) if len(metric_records) == 1 else {}
    report = SiteReport(round=0, node_id=node_id, site=site_name(node_id, metrics), status="rejected")
    report.metrics = metrics
    if len(metric_records) != 1:
        report.reason = f"expected one MetricRecord, got {len(metric_records)}"
        return report, None
    weight = metrics.get(weight_key)
    if weight is None or not math.isfinite(weight) or weight <= 0:
        report.reason = f"{weight_key!r} is {weight}, need a number > 0"
        return report, None
    arrays: dict[str, np.ndarray] = {}
    if with_arrays:
        array_records = list(content.array_records.values())
        if len(array_records) != 1:
            report.reason = f"expected one ArrayRecord, got {len(array_records)}"
            return report, None
        report.keys_returned = len(array_records[0])
        report.bytes_returned = sum(len(a.data) for a in array_records[0].values())
        try:
            arrays = {key: a.numpy() for key, a in array_records[0].items()}
        except (ValueError, TypeError) as exc:
            report.reason = f"arrays cannot be decoded: {exc}"
            return report, None
    report.status = "ok"
    return report, SiteUpdate(site=report.site, arrays=arrays, num_examples=int(weight))


def error_report(node_id: int, error: Error) -> SiteReport:
    """A report for a reply that carries an error instead of content."""
    return SiteReport(round=0, node_id=node_id, site=str(node_id), status="error", reason=error.reason or "")


def destinations(sent: Iterable[Message]) -> dict[str, int]:
    """Node each sent message went to, by message id (set by the Grid when it pushes the message)."""
    return {msg.metadata.message_id: msg.metadata.dst_node_id for msg in sent if msg.metadata.message_id}


class PartialModelStrategy(FedAvg):
    """FedAvg's sampling and round loop; aggregation per key by `aggregator`, bad replies rejected."""

    def __init__(  # pylint: disable=too-many-arguments
        self,
        aggregator: Aggregator,
        *,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_train_nodes: int = 1,
        min_evaluate_nodes: int = 1,
        min_available_nodes: int = 1,
        round_offset: int = 0,
        on_site_reports: SiteReportsCallback | None = None,
        reply_check: ReplyCheck | None = None,
    ) -> None:
        super().__init__(
            fraction_train=fraction_train,
            fraction_evaluate=fraction_evaluate,
            min_train_nodes=min_train_nodes,
            min_evaluate_nodes=min_evaluate_nodes,
            min_available_nodes=min_available_nodes,
        )
        self.aggregator = aggregator
        self.round_offset = round_offset
        self.on_site_reports = on_site_reports
        self.reply_check = reply_check  # e.g. the server's record of each private site's epsilon
        self.current_arrays: dict[str, np.ndarray] | None = None
        self.sent: list[Message] = []  # the requests of the current phase, as handed to the Grid
        self.site_ids: dict[int, str] = {}  # node id -> the site id it reported, for replies without metrics

    def summary(self) -> None:
        """Log the aggregator and its options, then FedAvg's sampling summary."""
        logger.info("\t├──> Partial-model aggregation: %s %s", self.aggregator.name, self.aggregator.options())
        logger.info("\t├──> Round offset: %d", self.round_offset)
        super().summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's configure_train with the offset round and the aggregator's extra config."""
        self.current_arrays = {key: a.numpy() for key, a in arrays.items()}
        for key, value in self.aggregator.train_config().items():
            config[key] = value
        self.sent = list(super().configure_train(server_round + self.round_offset, arrays, config, grid))
        return self.sent

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's configure_evaluate with the offset round."""
        self.current_arrays = {key: a.numpy() for key, a in arrays.items()}
        self.sent = list(super().configure_evaluate(server_round + self.round_offset, arrays, config, grid))
        return self.sent

    def _collect(
        self, server_round: int, replies: Iterable[Message], global_arrays: dict[str, np.ndarray] | None
    ) -> tuple[list[SiteReport], list[SiteUpdate]]:
        """Turn replies into reports and accepted updates; log every error and rejection.

        Train replies are validated against `global_arrays`; evaluation replies (None) carry no arrays.
        """
        with_arrays = global_arrays is not None
        phase = "train" if with_arrays else "evaluate"
        reports: list[SiteReport] = []
        accepted: list[SiteUpdate] = []
        sent_to = destinations(self.sent)
        answered: set[str] = set()
        for msg in replies:
            answered.add(msg.metadata.reply_to_message_id)
            node_id = sent_to.get(msg.metadata.reply_to_message_id, msg.metadata.src_node_id)
            if msg.has_error():
                report, update = error_report(node_id, msg.error), None
                report.site = self.site_ids.get(node_id, report.site)
            else:
                report, update = read_reply(node_id, msg.content, self.weighted_by_key, with_arrays)
                self.site_ids[node_id] = report.site
            if update is not None and global_arrays is not None:
                reason = validate_update(global_arrays, update)
                if reason:
                    report.status, report.reason, update = "rejected", reason, None
            if with_arrays and not msg.has_error() and self.reply_check is not None:
                reason = self.reply_check(report.site, server_round + self.round_offset, report.metrics)
                if reason and update is not None:
                    report.status, report.reason, update = "rejected", reason, None
            reports.append(report)
            if update is not None:
                accepted.append(update)
        reports += [SiteReport(round=0, node_id=node_id, site=self.site_ids.get(node_id, str(node_id)),
                               status=NO_REPLY, reason=NO_REPLY_REASON)
                    for message_id, node_id in sent_to.items() if message_id not in answered]
        for report in reports:
            report.round = server_round + self.round_offset
            if report.status != "ok":
                logger.warning("%s round %d: %s from site %s: %s", phase, report.round, report.status,
                               report.site, report.reason)
        logger.info("%s round %d: %d of %d replies accepted", phase, server_round + self.round_offset,
                    len(accepted), len(reports))
        return reports, accepted

    def _report(self, phase: str, server_round: int, reports: list[SiteReport]) -> None:
        if self.on_site_reports is not None:
            self.on_site_reports(phase, server_round + self.round_offset, reports)

    def _mean_metrics(self, reports: list[SiteReport]) -> MetricRecord:
        rows = [(r.metrics, float(r.metrics[self.weighted_by_key])) for r in reports if r.status == "ok"]
        return MetricRecord(weighted_mean_metrics(rows, skip=(self.weighted_by_key, SITE_ID_KEY)))

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate the accepted replies per key.

        Raises:
            NoSiteTrained: no reply is usable; the run stops rather than carry an untrained model forward.
        """
        if self.current_arrays is None:
            raise RuntimeError("aggregate_train called before configure_train: no global arrays to update")
        reports, accepted = self._collect(server_round, replies, self.current_arrays)
        self._report("train", server_round, reports)
        if not accepted:
            why = "; ".join(f"site {r.site} {r.status}: {r.reason}" for r in reports) or "no site was sampled"
            raise NoSiteTrained(f"train round {server_round + self.round_offset}: no site trained ({why})")
        new_arrays = self.aggregator.aggregate(self.current_arrays, accepted)
        record = ArrayRecord({key: Array(np.ascontiguousarray(value)) for key, value in new_arrays.items()})
        return record, self._mean_metrics(reports)

    def record_unreleased(self, server_round: int, replies: Iterable[Message]) -> None:
        """Report every site of a train round whose aggregate is not released (central DP refused the round)."""
        if self.current_arrays is not None:
            self._report("train", server_round, self._collect(server_round, replies, self.current_arrays)[0])

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Weighted mean of the evaluation metrics of the usable replies; None if there is none."""
        reports, accepted = self._collect(server_round, replies, None)
        self._report("evaluate", server_round, reports)
        return self._mean_metrics(reports) if accepted else None

    def state_dict(self) -> dict[str, Any]:
        """The aggregator's server-optimiser state, for checkpoints."""
        return self.aggregator.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the aggregator's state from a checkpoint."""
        self.aggregator.load_state_dict(state)


def build_strategy(
    name: str,
    round_offset: int = 0,
    on_site_reports: SiteReportsCallback | None = None,
    min_nodes: int = 1,
    fraction_evaluate: float = 1.0,
    reply_check: ReplyCheck | None = None,
    **aggregator_options: float,
) -> PartialModelStrategy:
    """A PartialModelStrategy with the aggregator `name`; `min_nodes` sets all three node minimums;
    `fraction_evaluate` 0 asks no site to evaluate."""
    return PartialModelStrategy(
        build_aggregator(name, **aggregator_options),
        fraction_evaluate=fraction_evaluate,
        min_train_nodes=min_nodes,
        min_evaluate_nodes=min_nodes,
        min_available_nodes=min_nodes,
        round_offset=round_offset,
        on_site_reports=on_site_reports,
        reply_check=reply_check,
    )
