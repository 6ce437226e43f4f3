"""Pipelined JetStream publishing: many messages in flight, each confirmed, none stored twice.

Every message carries `Nats-Msg-Id: PRODUCER.TOPIC-INDEX.N`: this producer's
identity, the topic's index among the topics it publishes, and the topic's
own counter. JetStream stores a retried id once (within the stream's duplicate
window), so a message whose acknowledgement was lost with a connection or a
node is simply sent again. Consumers read the same id to count, per producer
and topic, messages that retention discarded before they read them.

Publishing does not wait for each acknowledgement: up to `max_in_flight`
messages are out at once, each with its own reply subject under one inbox,
and `publish` waits only when that many are unconfirmed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import secrets

from nats.aio.subscription import Subscription as NatsSubscription

from broker.errors import BrokerError, ConnectionLostError
from broker.jetstream.answers import Kind, Outage, classify
from broker.jetstream.connection import Connection, Sends, status_of
from broker.tasks import stop_task

log = logging.getLogger("slipstream.client")

MSG_ID = "Nats-Msg-Id"
ACK_TIMEOUT_S = 5.0  # an unconfirmed publish is sent again (same id) after this
WRITE_EVERY = 256  # a publishing loop hands nats-py this many messages at a time


class _Pending:
    __slots__ = ("command", "future", "sent_at", "topic")

    def __init__(self, topic: str, command: bytes, future: asyncio.Future[int] | None) -> None:
        self.topic = topic
        self.command = command  # the whole HPUB, ready to send (again)
        self.future = future
        self.sent_at = 0.0  # 0: not sent on the current connection


def hpub(subject: str, reply: str, msg_id: str, payload: bytes) -> bytes:
    """One NATS HPUB command carrying `Nats-Msg-Id` (the NATS client protocol)."""
    headers = f"NATS/1.0\r\n{MSG_ID}: {msg_id}\r\n\r\n".encode()
    return (f"HPUB {subject} {reply} {len(headers)} {len(headers) + len(payload)}\r\n"
            .encode() + headers + payload + b"\r\n")


class Publisher:
    """Sends publishes with ids and matches JetStream's acknowledgements to them."""

    def __init__(self, nc: Connection, errors: list[BrokerError], sends: Sends,
                 max_in_flight: int = 8192) -> None:
        self.nc = nc
        self.sends = sends  # the client's: its close waits for them
        self.errors = errors  # the client's: refused publishes nobody waits for go here
        self.producer_id = secrets.token_hex(5)
        self.max_in_flight = max_in_flight
        self.retried = 0
        self._inflight: dict[int, _Pending] = {}  # by token, in publish order
        self._tokens = itertools.count(1)
        self._topic_index: dict[str, int] = {}
        self._topic_counts: dict[str, int] = {}
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._inbox = ""
        self._outbox: list[bytes] = []
        self._flush_scheduled = False
        self._inbox_sub: NatsSubscription | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self.outage = Outage()  # said once when JetStream stops confirming, once when back

    async def start(self) -> None:
        self._inbox = self.nc.new_inbox()
        self._inbox_sub = await self.nc.subscribe(f"{self._inbox}.*")
        self.nc.route_directly(self._inbox_sub, self._on_ack)
        self._watchdog = asyncio.create_task(self._resend_overdue(), name="jetstream-resend")

    async def stop(self) -> None:
        await stop_task(self._watchdog)
        self._watchdog = None
        lost = ConnectionLostError("client closed before JetStream confirmed this publish")
        for pending in self._inflight.values():
            if pending.future is not None and not pending.future.done():
                pending.future.set_exception(lost)
        self._inflight.clear()

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    def message_id(self, topic: str) -> str:
        index = self._topic_index.get(topic)
        if index is None:
            index = self._topic_index[topic] = len(self._topic_index) + 1
        count = self._topic_counts.get(topic, 0) + 1
        self._topic_counts[topic] = count
        return f"{self.producer_id}.{index}.{count}"

    async def publish(self, topic: str, payload: bytes,
                      confirm: bool) -> asyncio.Future[int] | None:
        """Queue one message; returns a future of its stream seq when `confirm`."""
        while len(self._inflight) >= self.max_in_flight:
            self._room.clear()
            await self._room.wait()
        future = asyncio.get_running_loop().create_future() if confirm else None
        token = next(self._tokens)
        command = hpub(topic, f"{self._inbox}.{token}", self.message_id(topic), payload)
        pending = _Pending(topic, command, future)
        self._inflight[token] = pending
        self._idle.clear()
        self._queue(pending)
        if len(self._outbox) >= WRITE_EVERY:
            await self._write()
            await asyncio.sleep(0)  # let nats-py's flusher and our acknowledgements run
        return future

    def _queue(self, pending: _Pending) -> None:
        pending.sent_at = asyncio.get_running_loop().time()
        self._outbox.append(pending.command)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._write_soon)

    def _write_soon(self) -> None:
        self._flush_scheduled = False
        if self._outbox:
            self.sends.start(self._write(), "a write to NATS")

    async def _write(self) -> None:
        """Hand the queued commands to nats-py in one piece.

        nats-py has no public call for pre-encoded messages; these two are what its
        own publish() ends with, minus re-validating and re-encoding every header.
        """
        data, self._outbox = b"".join(self._outbox), []
        if not data or not self.nc.is_connected:
            return  # unsent: sent again once reconnected (resend_all)
        await self.nc._send_command(data)
        await self.nc._flush_pending()

    async def resend_all(self) -> None:
        """After a reconnect: what was unconfirmed may be lost in transit."""
        await self._resend(list(self._inflight.values()))

    async def _resend(self, pendings: list[_Pending]) -> None:
        """Send again, with the same ids: what JetStream already stored is not stored twice."""
        self.retried += len(pendings)
        for pending in pendings:
            self._queue(pending)
        await self._write()

    async def _resend_overdue(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(ACK_TIMEOUT_S / 5)
            now = loop.time()
            overdue = [pending for pending in self._inflight.values()
                       if now - pending.sent_at > ACK_TIMEOUT_S]
            if overdue:
                self._trouble(f"{len(overdue):,} publishes got no answer within "
                              f"{ACK_TIMEOUT_S:g} s (a stream whose nodes lost their quorum "
                              "answers nothing)")
                self.outage.retried += len(overdue)
                log.debug("%d publishes unconfirmed for %g s: sending them again (same ids)",
                          len(overdue), ACK_TIMEOUT_S)
            await self._resend(overdue)

    def _trouble(self, cause: str) -> None:
        if self.outage.started(asyncio.get_running_loop().time()):
            log.warning("JetStream is not confirming publishes: %s. Holding them and sending "
                        "them again quietly (same ids: nothing is stored twice)", cause)

    def refused(self, subject: str) -> None:
        """nats-server refused publishes to `subject` (its permissions): they fail now."""
        for token, pending in list(self._inflight.items()):
            if pending.topic.lower() == subject.lower():
                self._settle(token, pending, error="permission_denied")

    def _on_ack(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        token = int(subject.rpartition(b".")[2])
        pending = self._inflight.get(token)
        if pending is None:
            return  # the answer to a publish sent twice: the first answer settled it
        status = status_of(headers)
        if status is None and b'"error"' not in data:  # stored: the hot path
            seq = json.loads(data)["seq"] if pending.future is not None else 0
            self._settle(token, pending, seq=seq)
            return
        answer = classify(status, data)
        if answer.kind is Kind.NOT_YET:  # no leader, a timeout, an earlier copy in process
            pending.sent_at = 0.0  # the watchdog sends it again, with its id
            self._trouble(answer.why)
        elif answer.kind is Kind.REFUSED:
            self._settle(token, pending, error=answer.why)
        else:
            self._settle(token, pending, seq=answer.seq)

    def _settle(self, token: int, pending: _Pending, seq: int = 0,
                error: str | None = None) -> None:
        del self._inflight[token]
        if error is None and self.outage.since_s is not None:
            retried = self.outage.retried
            lasted = self.outage.ended(asyncio.get_running_loop().time())
            log.warning("JetStream confirms publishes again after %.1f s (%s sent again "
                        "meanwhile)", lasted, f"{retried:,}")
        if len(self._inflight) < self.max_in_flight // 2:
            self._room.set()
        if not self._inflight:
            self._idle.set()
        if error == "permission_denied":
            failure = BrokerError(error, f"NATS refused a message to {pending.topic!r}: the "
                                  "user may not publish there (its permissions)")
        elif error is not None:
            failure = BrokerError("publish_failed",
                                  f"JetStream refused a message to {pending.topic!r}: {error}")
        if error is not None:
            if pending.future is not None:
                if not pending.future.done():
                    pending.future.set_exception(failure)
            else:
                self.errors.append(failure)
                log.error("%s", failure)
        elif pending.future is not None and not pending.future.done():
            pending.future.set_result(seq)

    async def wait_confirmed(self, timeout_s: float | None = None) -> bool:
        """Wait until every publish so far is confirmed; False if `timeout_s` ran out."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
                return True
        return False
