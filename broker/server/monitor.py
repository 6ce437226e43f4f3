"""`--http HOST:PORT`: the broker's monitoring endpoints, for probes and Prometheus.

    /healthz   200 while the broker accepts connections; 503 while it is starting
               (loading --data-dir, say) or shutting down
    /varz      the server's totals as JSON (what `slipstream stats` shows first)
    /metrics   Prometheus text format (prometheus-client)

Everything is read from the broker when asked, so the broker's hot path pays
nothing for it; and each answer has a bound, whatever the broker holds: the
per-topic series are those of the TOPICS_LABELLED busiest topics, and the
totals cover the rest (docs/operations.md).
"""

from __future__ import annotations

import heapq
import json
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from broker.server import stats as broker_stats

if TYPE_CHECKING:
    from broker.server.core import BrokerCore

log = logging.getLogger("slipstream.broker")

TOPICS_LABELLED = 100  # per-topic series for this many (the most published) topics


class BrokerCollector(Collector):
    """The broker's figures as Prometheus metric families, read at scrape time."""

    def __init__(self, broker: BrokerCore) -> None:
        self.broker = broker

    def collect(self) -> Iterator[Metric]:
        broker = self.broker
        totals = broker.totals
        yield GaugeMetricFamily("slipstream_up", "1 while the broker accepts connections",
                                value=1.0 if broker.state == "accepting" else 0.0)
        for name, text, value in (
            ("connections", "open client connections", len(broker.sessions)),
            ("subscriptions", "subscriptions over every connection",
             sum(len(c.subscriptions) for c in broker.sessions)),
            ("topics", "topics held", len(broker.topics)),
            ("durables", "durable subscriptions remembered", len(broker.durables)),
            ("retained_messages", "messages retained across every topic",
             sum(t.retained for t in broker.topics.values())),
            ("retained_bytes", "payload bytes retained across every topic",
             broker.budget.used_bytes),
        ):
            yield GaugeMetricFamily(f"slipstream_{name}", text, value=value)
        for name, text in (("published", "messages published"),
                           ("delivered", "messages sent to subscribers"),
                           ("gaps", "gap notices sent (losses reported to subscribers)"),
                           ("missed", "messages those gap notices count"),
                           ("unreadable", "of those, messages on disk that could not be "
                                          "read (damaged, or their files gone)"),
                           ("bytes_in", "bytes read from clients"),
                           ("bytes_out", "bytes written to clients")):
            yield CounterMetricFamily(f"slipstream_{name}", f"{text}, since the start",
                                      value=totals[name])
        refusals = CounterMetricFamily(
            "slipstream_limit_events", "what the limits refused or removed, since the start",
            labels=["event"])
        for event, count in sorted(broker.counters.items()):
            refusals.add_metric([event], count)
        yield refusals
        yield from self._busiest_topics()

    def _busiest_topics(self) -> Iterator[Metric]:
        topics = heapq.nlargest(TOPICS_LABELLED, self.broker.topics.values(),
                                key=lambda topic: topic.published_total)
        published = CounterMetricFamily(
            "slipstream_topic_published", f"messages published, for the {TOPICS_LABELLED} "
            "most published topics", labels=["topic"])
        evicted = CounterMetricFamily(
            "slipstream_topic_evicted", "messages evicted by retention, same topics",
            labels=["topic"])
        retained = GaugeMetricFamily("slipstream_topic_retained_messages",
                                     "messages retained, same topics", labels=["topic"])
        for topic in topics:
            published.add_metric([topic.name], topic.published_total)
            evicted.add_metric([topic.name], topic.evicted_total)
            retained.add_metric([topic.name], topic.retained)
        yield from (published, evicted, retained)


class Monitor:
    """The HTTP server behind --http, started before the broker listens (so that
    /healthz can say "starting") and stopped after it has closed."""

    def __init__(self, broker: BrokerCore, host: str, port: int) -> None:
        self.broker = broker
        self.host, self.port = host, port
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(BrokerCollector(broker))
        self.registry.register(ProcessCollector(registry=None))  # RSS, CPU, open files
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/varz", self.varz)
        app.router.add_get("/metrics", self.metrics)
        return app

    async def start(self) -> int:
        """Serve; returns the port (the one picked, with port 0)."""
        self._runner = web.AppRunner(self.app(), handle_signals=False, access_log=None,
                                     shutdown_timeout=1.0)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self.host, self.port).start()
        except OSError:
            await self._runner.cleanup()
            raise
        addresses = self._runner.addresses
        return int(addresses[0][1]) if addresses else self.port

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def healthz(self, request: web.Request) -> web.Response:
        state = self.broker.state
        return web.json_response({"status": state}, status=200 if state == "accepting" else 503)

    async def varz(self, request: web.Request) -> web.Response:
        body = {**broker_stats.server_totals(self.broker), "state": self.broker.state,
                "totals": dict(self.broker.totals)}
        return web.Response(text=json.dumps(body, indent=1), content_type="application/json")

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})
