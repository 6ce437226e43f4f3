"""`Client("nats://...")`: slipstream's client interface on a NATS JetStream stream.

nats-py does the connection work (reconnecting across a cluster's seeds);
broker/jetstream/publisher.py pipelines confirmed publishes, and
broker/jetstream/subscription.py turns JetStream consumers into slipstream
subscriptions. The stream is created on first use (broker/jetstream/stream.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from typing import Any

from nats.aio.client import Client as Nats
from nats.js import JetStreamContext
from nats.js import errors as js_errors

from broker.client import DEFAULT_STREAM, STREAM_ENV, Client
from broker.errors import (
    BrokerError,
    ConfigError,
    ConnectError,
    ConnectionLostError,
    HandshakeRefusedError,
    SlipstreamError,
)
from broker.jetstream.address import display, parse_servers
from broker.jetstream.connection import Connection, Sends
from broker.jetstream.publisher import Publisher
from broker.jetstream.stream import StreamSpec, covered, ensure_stream, epoch_of
from broker.jetstream.subscription import INBOX_PREFIX, JetStreamSubscription
from broker.server.routing import validate_pattern, validate_topic
from broker.subscription import Start
from broker.tls import TlsFiles, client_context

log = logging.getLogger("slipstream.client")

CLOSE_FLUSH_S = 10.0  # closing waits this long for unconfirmed publishes
MAX_IN_FLIGHT = 8192


class JetStreamClient(Client):
    """A connection to a NATS cluster, publishing to and reading from one JetStream stream."""

    def __init__(self, broker: str | None = None, *, name: str = "slipstream-client",
                 token: str | None = None, reconnect: bool = True,
                 connect_timeout_s: float = 5.0, reconnect_max_delay_s: float = 2.0,
                 stream: str | None = None, spec: StreamSpec | None = None,
                 max_in_flight: int = MAX_IN_FLIGHT, tls: TlsFiles | None = None,
                 user: str | None = None, password: str | None = None) -> None:
        super().__init__(broker, name=name, token=token, reconnect=reconnect,
                         connect_timeout_s=connect_timeout_s,
                         reconnect_max_delay_s=reconnect_max_delay_s, tls=tls, user=user,
                         password=password)
        self.servers = parse_servers(self.address)
        self.spec = spec or StreamSpec(name=stream or os.environ.get(STREAM_ENV)
                                       or DEFAULT_STREAM)
        self.generation = 1  # JetStream acknowledgements never go stale (see subscription)
        self.max_in_flight = max_in_flight
        self.cluster_size = 1
        self._nc: Connection | None = None
        self._js: JetStreamContext | None = None
        self._publisher: Publisher | None = None
        self.sends = Sends()  # writes and acks nobody waits for: close() waits for them
        self._subs: list[JetStreamSubscription] = []
        self._subs_attaching: list[JetStreamSubscription] = []  # waiting for CREATE
        self._covered: set[str] = set()  # topic families known to be in the stream
        self._closing = False
        self._ever_connected = False

    @property
    def nc(self) -> Connection:
        assert self._nc is not None, "connect() first"
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        assert self._js is not None, "connect() first"
        return self._js

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected and not self._closing

    # --- connecting ----------------------------------------------------------------------

    async def connect(self, wait: bool = False) -> None:
        where = f"NATS at {display(self.servers)}"
        delay = 0.05
        attempt = 0
        while True:
            attempt += 1
            try:
                self._nc = await self._open(where)
                break
            except ConnectError as exc:
                if not wait or self._closing:
                    raise
                if attempt == 1 or attempt % 10 == 0:
                    log.warning("connect attempt %d failed: %s", attempt, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.reconnect_max_delay_s)
        self._js = self.nc.jetstream(timeout=self.connect_timeout_s + 5)
        self.cluster_size = _cluster_size(self.nc)
        try:
            info = await ensure_stream(self.js, self.spec, self.cluster_size)
        except BaseException:
            await self.nc.close()
            raise
        self.epoch = epoch_of(info)
        self._covered.update(info.config.subjects or [])
        self.max_payload_bytes = min(self.nc.max_payload, self.max_payload_bytes)
        self._publisher = Publisher(self.nc, self.errors, self.sends, self.max_in_flight)
        await self._publisher.start()
        self._ever_connected = True

    async def _open(self, where: str) -> Connection:
        nc = Connection()
        refused: list[str] = []

        async def on_error(exc: Exception) -> None:
            text = str(exc)
            if "Authorization" in text or "authentication" in text.lower():
                refused.append(text)
            elif "permissions violation" in text:
                self._permission_refused(text)
            elif self._ever_connected:
                log.debug("NATS: %s", text)

        try:
            # Each seed twice: a first connection fails fast (connect(wait=True) retries).
            await nc.connect(
                servers=self.servers, name=self.name, token=self.token, user=self.user,
                password=self.password if self.user else None,
                # A user's replies and deliveries come to inboxes only it may read
                # (`slipstream users --nats`: subscribe _INBOX_<user>.>).
                inbox_prefix=f"{INBOX_PREFIX}{self.user}" if self.user else "_INBOX",
                connect_timeout=max(1, int(self.connect_timeout_s)),
                allow_reconnect=True, max_reconnect_attempts=1,
                reconnect_time_wait=self.reconnect_max_delay_s,  # type: ignore[arg-type]
                error_cb=on_error, disconnected_cb=self._disconnected,
                reconnected_cb=self._reconnected,
                tls=client_context(self.tls) if self.tls else None)
        except ConfigError:
            raise  # an unusable --tls-* file
        except Exception as exc:
            if refused or "Authorization" in str(exc):
                raise HandshakeRefusedError(
                    f"{where} refused the connection: {refused[0] if refused else exc} "
                    "(check --token or the user:password in the address)") from None
            raise ConnectError(f"cannot reach {where}: {exc or type(exc).__name__} "
                               "(is nats-server running?)") from None
        # Once connected, a lost connection is retried for as long as it takes.
        nc.options["allow_reconnect"] = self.reconnect
        nc.options["max_reconnect_attempts"] = -1
        return nc

    def _permission_refused(self, text: str) -> None:
        """nats-server refused a publish the user may not make (it says so asynchronously,
        and never answers): fail the publishes to that subject, or the consumer waiting
        for its CREATE, with `permission_denied` instead of letting them time out."""
        match = re.search(r'publish to "([^"]+)"', text)
        subject = match.group(1) if match else ""
        log.error("NATS refused %s: the user's permissions do not allow it (docs/security.md)",
                  repr(subject) if subject else text)
        if subject.lower().startswith("$js.api.consumer.create."):
            for sub in self._subs_attaching:
                sub.refused(subject)
        elif self._publisher is not None and subject:
            self._publisher.refused(subject)

    async def _disconnected(self) -> None:
        if not self._closing:
            log.warning("lost the connection to NATS; reconnecting (nats-py retries every "
                        "%g s)", self.reconnect_max_delay_s)

    async def _reconnected(self) -> None:
        self.reconnects += 1
        url = self.nc.connected_url
        log.info("reconnected to NATS at %s", f"{url.hostname}:{url.port}" if url else "?")
        if self._publisher is not None:
            await self._publisher.resend_all()

    # --- publishing ----------------------------------------------------------------------

    async def publish_bytes(self, topic: str, payload: bytes, *,
                            confirm: bool = False) -> int | None:
        if topic not in self._covered:
            validate_topic(topic)
            await self._cover(topic)
            self._covered.add(topic)
        if len(payload) > self.max_payload_bytes:
            raise BrokerError("payload_too_large",
                              f"payload of {len(payload):,} bytes to {topic!r} exceeds max "
                              f"payload {self.max_payload_bytes:,}")
        publisher = self._publisher
        if publisher is None or self._closing:
            raise ConnectionLostError("client is closed")
        future = await publisher.publish(topic, payload, confirm)
        self.published += 1
        if future is None:
            return None
        return await future

    async def _cover(self, topic_or_pattern: str) -> None:
        """Make sure the stream's subjects take this topic (or pattern)."""
        if covered(topic_or_pattern, sorted(self._covered)):
            return
        info = await ensure_stream(self.js, self.spec, self.cluster_size, needs=topic_or_pattern)
        self._covered.update(info.config.subjects or [])

    async def flush(self) -> None:
        """Wait until JetStream has confirmed everything published so far."""
        if self._publisher is not None:
            await self._publisher.wait_confirmed()

    # --- subscribing ---------------------------------------------------------------------

    async def subscribe(self, pattern: str, *, start: Start = "new", durable: str | None = None,
                        window: int = 8192, auto_ack: bool = True) -> JetStreamSubscription:
        validate_pattern(pattern)
        if self._js is None or self._closing:
            raise ConnectionLostError("client is not connected")
        await self._cover(pattern)
        sub = JetStreamSubscription(self, pattern, start, durable, window, auto_ack)
        self._subs_attaching.append(sub)
        try:
            await sub.attach()
        except js_errors.BadRequestError as exc:
            await sub.stop()
            raise SlipstreamError(f"JetStream refused a consumer for {pattern!r}: "
                                  f"{exc.description}") from None
        except BaseException:
            await sub.stop()
            raise
        finally:
            self._subs_attaching.remove(sub)
        self._subs.append(sub)
        return sub

    def forget(self, sub: JetStreamSubscription) -> None:
        """Stop tracking `sub` (it unsubscribed)."""
        if sub in self._subs:
            self._subs.remove(sub)

    # --- looking inside ------------------------------------------------------------------

    async def stats(self, **options: Any) -> dict[str, Any]:
        """The stream's state in the embedded broker's STATS shape (one page holds it all)."""
        info = await self.js.stream_info(self.spec.name, subjects_filter=options.get("topics")
                                         or ">")
        state, config = info.state, info.config
        subjects = state.subjects or {}
        return {
            "server": {
                "name": f"nats {display(self.servers)}", "engine": "nats-jetstream",
                "stream": self.spec.name, "pid": 0, "uptime_s": 0.0, "on_full": "drop",
                "retain_messages": config.max_msgs_per_subject,
                "retain_bytes": config.max_bytes, "replicas": config.num_replicas,
                "topics": len(subjects), "retained_bytes": state.bytes,
                "max_memory_bytes": config.max_bytes, "connections": 0,
                "durables": state.consumer_count, "first_seq": state.first_seq,
                "last_seq": state.last_seq, "messages": state.messages},
            # JetStream keeps no per-subject publish count: what is held is what we know.
            "topics": {name: {"published": count, "retained": count, "retained_bytes": 0,
                              "evicted": 0, "subscribers": 0}
                       for name, count in sorted(subjects.items())},
            "connections": [],
        }

    async def stats_all(self, topics: str | None = None,
                        connections: bool = True) -> dict[str, Any]:
        return await self.stats(topics=topics)

    async def ping(self) -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await self.nc.flush(timeout=int(self.connect_timeout_s) or 1)
        return loop.time() - started

    # --- closing -------------------------------------------------------------------------

    async def close(self) -> None:
        if self._closing or self._nc is None:
            self._closing = True
            return
        for sub in self._subs:
            sub.finish_on_close()
        publisher = self._publisher
        if publisher is not None and self.nc.is_connected and \
                not await publisher.wait_confirmed(CLOSE_FLUSH_S):
            log.warning("closing with %d publishes JetStream has not confirmed",
                            publisher.in_flight)
        self._closing = True
        for sub in list(self._subs):
            await sub.stop()
            sub.end(StopAsyncIteration())
        if publisher is not None:
            await publisher.stop()
        await self.sends.finish(CLOSE_FLUSH_S)
        with contextlib.suppress(Exception):  # closing anyway
            await self.nc.flush(timeout=1)
        await self.nc.close()


def _cluster_size(nc: Nats) -> int:
    """How many servers the cluster has, from what the server told us of its peers."""
    info: dict[str, Any] = getattr(nc, "_server_info", {}) or {}
    urls = info.get("connect_urls") or []
    return max(1, len(set(urls)))

