"""The Prometheus endpoint: read from the registry and the spool at each scrape.

The spool and the registry are the truth, so the figures are taken from them
when Prometheus asks (a few cheap queries), not kept in counters that a
restart would reset; only the daemon's own work since start (items it
processed, by outcome) is counted in memory.
"""
from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from gateway.registry import Registry
from gateway.registry.leases import cluster_status
from gateway.registry.ledger import ImapLedger
from gateway.registry.models import Letter, OutboxMail
from gateway.spool import Spool
from gateway.registry.lifecycle import OPEN

log = logging.getLogger("gateway.metrics")


class GatewayCollector(Collector):
    def __init__(self, registry: Registry, spool: Spool, processed: Callable[[], Counter[str]]):
        self.registry = registry
        self.spool = spool
        self.processed = processed

    def collect(self) -> Iterator[Any]:
        processed = CounterMetricFamily("gateway_items_processed", "Items the daemon processed since it started, "
                                        "by outcome", labels=["outcome"])
        for outcome, count in sorted(self.processed().items()):
            processed.add_metric([outcome], count)
        yield processed
        waiting = GaugeMetricFamily("gateway_spool_items", "Items in the spool", labels=["state"])
        waiting.add_metric(["waiting"], len(self.spool.pending()))
        waiting.add_metric(["in_progress"], len(self.spool.claimed()))
        waiting.add_metric(["quarantined"], self.spool.quarantined_count())
        yield waiting
        yield GaugeMetricFamily("gateway_oldest_unprocessed_age_seconds",
                                "Age of the oldest item not yet registered (0: none)", value=self.spool.oldest_age())
        try:
            figures = self._query()
        except Exception as exc:  # the registry is away: say so, and still serve what the spool knows
            log.warning("metrics: registry unavailable: %s", exc)
            figures = None
        yield GaugeMetricFamily("gateway_registry_up", "Whether the registry answered this scrape",
                                value=0.0 if figures is None else 1.0)
        if figures is not None:
            yield from figures

    def _query(self) -> list[Any]:
        now = datetime.now(timezone.utc)
        with self.registry.read() as conn:
            by_channel = conn.execute(select(Letter.channel, func.count(Letter.id)).group_by(Letter.channel)).all()
            by_status = conn.execute(select(Letter.status, func.count(Letter.id)).group_by(Letter.status)).all()
            overdue = conn.execute(select(func.count(Letter.id)).where(
                Letter.deadline < now, Letter.status.in_(OPEN))).scalar_one()
            outbox = dict(conn.execute(select(OutboxMail.status, func.count(OutboxMail.id))
                                       .group_by(OutboxMail.status)).all())
            retrying = conn.execute(select(func.count(OutboxMail.id)).where(
                OutboxMail.status == "pending", OutboxMail.attempts > 0)).scalar_one()
        folders = ImapLedger(self.registry).status()
        # lease_seconds is the takeover time the daemon's cluster set on the registry.
        nodes = cluster_status(self.registry, self.registry.lease_seconds)

        received = CounterMetricFamily("gateway_letters_received", "Letters registered, by channel",
                                       labels=["channel"])
        for channel, count in by_channel:
            received.add_metric([channel], count)
        states = GaugeMetricFamily("gateway_letters", "Letters by state", labels=["status"])
        for status, count in by_status:
            states.add_metric([status], count)
        depth = GaugeMetricFamily("gateway_outbox_mails", "Mail in the outbox, by state", labels=["status"])
        for status in ("pending", "sent", "dead"):
            depth.add_metric([status], outbox.get(status, 0))
        polls = GaugeMetricFamily("gateway_imap_last_poll_timestamp_seconds",
                                  "When each IMAP folder was last polled successfully", labels=["account", "folder"])
        for row in folders:
            if row.get("last_poll_at"):
                polls.add_metric([row["account"], row["folder"]], row["last_poll_at"].timestamp())
        heartbeats = GaugeMetricFamily("gateway_node_heartbeat_timestamp_seconds",
                                       "Each node's last heartbeat", labels=["node"])
        up = GaugeMetricFamily("gateway_node_up", "Whether each node beats within the takeover time", labels=["node"])
        claims = GaugeMetricFamily("gateway_node_claims", "Work each live node has claimed, by kind",
                                   labels=["node", "kind"])
        held = GaugeMetricFamily("gateway_node_holds", "IMAP folders and periodic jobs each live node holds",
                                 labels=["node", "kind", "name"])
        for node in nodes:
            heartbeats.add_metric([node["name"]], node["heartbeat_at"].timestamp())
            up.add_metric([node["name"]], 1.0 if node["state"] == "alive" else 0.0)
            for kind, count in node["claims"].items():
                claims.add_metric([node["name"], kind], count)
            for folder in node["folders"]:
                held.add_metric([node["name"], "imap-folder", folder], 1.0)
            for job in node["jobs"]:
                held.add_metric([node["name"], "job", job], 1.0)
        return [received, states, depth, polls, heartbeats, up, claims, held,
                GaugeMetricFamily("gateway_letters_overdue", "Open letters past their deadline", value=overdue),
                GaugeMetricFamily("gateway_outbox_retrying", "Pending mail that failed at least once",
                                  value=retrying)]


class MetricsServer:
    def __init__(self, listen: str, registry: Registry, spool: Spool, processed: Callable[[], Counter[str]]):
        host, _, port = listen.rpartition(":")
        self.address = (host.strip("[]"), int(port))
        self.collectors = CollectorRegistry(auto_describe=False)
        self.collectors.register(GatewayCollector(registry, spool, processed))
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> str:
        self._server, self._thread = start_http_server(self.address[1], addr=self.address[0],
                                                       registry=self.collectors)
        return f"http://{self.address[0]}:{self.address[1]}/metrics"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
