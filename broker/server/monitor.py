"""`--http HOST:PORT`: the broker's monitoring endpoints, for probes and Prometheus.

    /healthz   200 while the broker accepts connections; 503 while it is starting
               (loading --data-dir, say) or shutting down
    /varz      the server's totals as JSON (what `slipstream stats` shows first)
    /metrics   Prometheus text format (prometheus-client)

Everything is read from the broker when asked, so the broker's hot path pays
nothing for it; and each answer has a bound, whatever the broker holds: the
per-topic series are those of the TOPICS_LABELLED busiest topics, and the
totals cover the rest (docs/operations.md). The port itself is bounded too
(`Guard`): at most MAX_CONNECTIONS at once, a request's headers within
HEADER_TIMEOUT_S, an idle keep-alive connection closed after IDLE_TIMEOUT_S,
so slow or idle HTTP clients can never take the broker's file descriptors.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
from collections.abc import Callable, Iterator
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
MAX_CONNECTIONS = 64  # HTTP connections at once; more are closed at once, and logged
HEADER_TIMEOUT_S = 10.0  # from a request's first byte to the end of its headers
IDLE_TIMEOUT_S = 60.0  # a keep-alive connection with no request for this long is closed


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
        yield from self._users()

    def _users(self) -> Iterator[Metric]:
        """Per user of --users (or the one built-in user): a bounded label set, since
        only the file's users are labelled, never a name a client sent."""
        accounts = self.broker.accounts
        connections = GaugeMetricFamily("slipstream_user_connections",
                                        "open connections, per user", labels=["user"])
        published = CounterMetricFamily("slipstream_user_published",
                                        "messages published, per user", labels=["user"])
        held = GaugeMetricFamily("slipstream_user_held", "what each user holds against its "
                                 "quota", labels=["user", "quota"])
        refused = CounterMetricFamily("slipstream_user_refusals", "requests refused, per "
                                      "user and error code", labels=["user", "code"])
        failed = CounterMetricFamily("slipstream_user_failed_logins", "failed logins, per "
                                     "user ('' for names no user has)", labels=["user"])
        failed.add_metric([""], accounts.unknown_user_logins)
        for name, account in sorted(accounts.by_name.items()):
            connections.add_metric([name], account.connections)
            published.add_metric([name], account.published)
            for quota in ("topics", "subscriptions", "followed"):
                held.add_metric([name, quota], getattr(account, quota))
            for code, count in sorted(account.refused.items()):
                refused.add_metric([name, code], count)
            failed.add_metric([name], account.failed_logins)
        yield from (connections, published, held, refused, failed)

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

    def __init__(self, broker: BrokerCore, host: str, port: int, *,
                 max_connections: int = MAX_CONNECTIONS,
                 header_timeout_s: float = HEADER_TIMEOUT_S,
                 idle_timeout_s: float = IDLE_TIMEOUT_S) -> None:
        self.broker = broker
        self.host, self.port = host, port
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(BrokerCollector(broker))
        self.registry.register(ProcessCollector(registry=None))  # RSS, CPU, open files
        self.guard = Guard(max_connections, header_timeout_s, idle_timeout_s,
                           broker.log_throttle.warning)
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None

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
        handlers = self._runner.server
        assert handlers is not None
        try:  # aiohttp's protocol, each one behind the guard
            self._server = await asyncio.get_running_loop().create_server(
                lambda: self.guard.wrap(handlers()), self.host, self.port)
        except OSError:
            await self._runner.cleanup()
            raise
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
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


class Guard:
    """Bounds on the monitoring port that aiohttp does not keep: connections at once, time
    to send a request's headers, time idle between requests. Each connection's protocol
    (aiohttp's request handler) sits behind a `_Guarded` that counts and times it."""

    def __init__(self, max_connections: int, header_timeout_s: float, idle_timeout_s: float,
                 warn: Callable[..., object]) -> None:
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.warn = warn  # a throttled log: a flood of refusals is a line now and then
        self.open = 0
        self.refused = 0
        self.timed_out = 0

    def wrap(self, handler: asyncio.Protocol) -> asyncio.Protocol:
        return _Guarded(self, handler)


class _Guarded(asyncio.Protocol):
    """One HTTP connection: passed through to aiohttp's handler, closed when over a bound.

    The monitoring endpoints are GETs: a request is its headers, ended by a blank line;
    the header timer runs from a request's first byte to that line, the idle timer from
    it to the next request's first byte."""

    def __init__(self, guard: Guard, handler: asyncio.Protocol) -> None:
        self.guard = guard
        self.handler = handler
        self.transport: asyncio.Transport | None = None
        self.counted = False
        self.timer: asyncio.TimerHandle | None = None
        self.in_headers = True  # a request has begun (or the connection is new)
        self.tail = b""  # the last bytes seen: a blank line may span two reads

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        guard = self.guard
        self.transport = transport  # type: ignore[assignment]
        if guard.open >= guard.max_connections:
            guard.refused += 1
            guard.warn("http-refused", "monitoring port: refusing a connection from %s: %d "
                       "are open (at most %d)", transport.get_extra_info("peername"),
                       guard.open, guard.max_connections)
            transport.close()
            return
        guard.open += 1
        self.counted = True
        self._arm(guard.header_timeout_s, "no complete request headers")
        self.handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self.counted:
            return
        if not self.in_headers:
            self.in_headers = True  # a new request begins
            self._arm(self.guard.header_timeout_s, "no complete request headers")
        seen = self.tail + data
        if b"\r\n\r\n" in seen:
            self.in_headers = False
            self._arm(self.guard.idle_timeout_s, "no request")
        self.tail = seen[-3:]
        self.handler.data_received(data)

    def eof_received(self) -> bool | None:
        return self.handler.eof_received() if self.counted else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.counted:
            self.guard.open -= 1
            self.handler.connection_lost(exc)

    def pause_writing(self) -> None:
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.handler.resume_writing()

    def _arm(self, delay_s: float, what: str) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(delay_s, self._expired, what,
                                                           delay_s)

    def _expired(self, what: str, delay_s: float) -> None:
        assert self.transport is not None
        self.guard.timed_out += 1
        self.guard.warn("http-timeout", "monitoring port: closing a connection from %s: %s "
                        "within %g s", self.transport.get_extra_info("peername"), what, delay_s)
        self.transport.close()

