"""nats-py's connection, with a direct path for slipstream's own busy subscriptions.

nats-py hands every message to a subscription through a header parser, a
`Msg` object, an asyncio queue and a task: about two thirds of what a
JetStream consumer or a confirming publisher spends per message here. The
deliveries and publish acknowledgements slipstream reads need none of that,
so their subscriptions register a plain function, called from the reader
with the raw parts. Everything else (connecting, reconnecting across a
cluster, re-subscribing, the JetStream API) stays nats-py's.

This leans on one internal of nats-py, `_process_msg(sid, subject, reply,
data, headers)`; tests/integration/test_nats.py fails loudly if that changes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from nats.aio.client import Client as Nats
from nats.aio.subscription import Subscription as NatsSubscription

log = logging.getLogger("slipstream.client")

# subject, reply, payload, raw header block (or None)
DirectHandler = Callable[[bytes, bytes, bytes, bytes | None], None]


class Connection(Nats):
    """A nats-py client whose registered subscriptions skip the per-message machinery."""

    def __init__(self) -> None:
        super().__init__()
        self._direct: dict[int, DirectHandler] = {}

    def route_directly(self, subscription: NatsSubscription, handler: DirectHandler) -> None:
        """From now on, `subscription`'s messages go to `handler`, in the reader's task."""
        self._direct[subscription._id] = handler

    def stop_routing(self, subscription: NatsSubscription) -> None:
        self._direct.pop(subscription._id, None)

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes,
                           headers: bytes | None) -> None:
        handler = self._direct.get(sid)
        if handler is None:
            await super()._process_msg(sid, subject, reply, data, headers)  # type: ignore[arg-type]
            return
        self.stats["in_msgs"] += 1
        self.stats["in_bytes"] += len(data)
        handler(subject, reply, data, headers)


class Sends:
    """Sends to NATS that nobody waits for, owned all the same: each task is held until it
    ends, and the client's close waits for those still running. A failure (the connection
    went) is only logged: what was lost is sent again (publishes on reconnect, acks with
    the next ack)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, send: Coroutine[Any, Any, None], what: str) -> None:
        task = asyncio.ensure_future(send)
        self._tasks.add(task)

        def done(task: asyncio.Task[None]) -> None:
            self._tasks.discard(task)
            if not task.cancelled() and task.exception() is not None:
                log.debug("%s failed (%s): it is sent again", what, task.exception())

        task.add_done_callback(done)

    async def finish(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` for the sends under way; cancel what is left, and wait
        for that too."""
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=timeout_s)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)


MSG_ID_HEADER_START = b"NATS/1.0\r\nNats-Msg-Id: "


def msg_id_of(headers: bytes | None) -> str | None:
    """The `Nats-Msg-Id` of a raw header block; None if it has none."""
    if not headers:
        return None
    if headers.startswith(MSG_ID_HEADER_START) and headers.count(b"\r\n") == 3:
        return headers[len(MSG_ID_HEADER_START):-4].decode()  # the common case: only it
    for line in headers.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"nats-msg-id":
            return value.strip().decode()
    return None


def status_of(headers: bytes | None) -> int | None:
    """The inline status of a raw header block ('NATS/1.0 503'), if any."""
    if not headers or not headers.startswith(b"NATS/1.0 "):
        return None
    code = headers[9:12]
    return int(code) if code.isdigit() else None


def header_value(headers: bytes | None, name: str) -> str | None:
    """One header's value from a raw header block."""
    if not headers:
        return None
    wanted = name.lower().encode()
    for line in headers.split(b"\r\n")[1:]:
        key, sep, value = line.partition(b":")
        if sep and key.strip().lower() == wanted:
            return value.strip().decode()
    return None
