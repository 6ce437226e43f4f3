"""STATS_REPLY, built within a size bound: totals always, then topics and connections, paged.

With 200,000 topics a complete reply would be tens of megabytes, larger than
any frame. So a request names a page (a topic pattern, where to start, a
limit) and the reply holds as many entries as fit in half a frame, with a
`more` cursor that the next request continues from (docs/protocol.md, STATS).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import msgpack

from broker.errors import ProtocolError
from broker.server.routing import pattern_matches, validate_pattern
from broker.wire import protocol as p

if TYPE_CHECKING:
    from broker.server.core import BrokerCore
    from broker.server.session import Session
    from broker.users.accounts import Account

DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000
SUBSCRIPTIONS_LISTED = 100  # per connection; the total is always given


class StatsQuery:
    """The options of one STATS request, checked."""

    def __init__(self, options: dict[str, Any] | None) -> None:
        options = options or {}
        self.pattern = options.get("topics")
        self.after_topic = options.get("after_topic")
        self.after_connection = options.get("after_connection", 0)
        self.topic_limit = options.get("topic_limit", DEFAULT_LIMIT)
        self.connection_limit = options.get("connection_limit", DEFAULT_LIMIT)
        if self.pattern is not None:
            if type(self.pattern) is not str:
                raise ProtocolError("STATS option 'topics' must be a pattern string",
                                    code="bad_stats")
            validate_pattern(self.pattern)
        if self.after_topic is not None and type(self.after_topic) is not str:
            raise ProtocolError("STATS option 'after_topic' must be a string", code="bad_stats")
        if type(self.after_connection) is not int:
            raise ProtocolError("STATS option 'after_connection' must be an int",
                                code="bad_stats")
        for name in ("topic_limit", "connection_limit"):
            value = getattr(self, name)
            if type(value) is not int or not 0 <= value <= MAX_LIMIT:
                raise ProtocolError(f"STATS option {name!r} must be an int in 0..{MAX_LIMIT:,}",
                                    code="bad_stats")


def build(broker: BrokerCore, query: StatsQuery, viewer: Account | None = None) -> dict[str, Any]:
    """The reply map; its encoding stays under half of max-frame, whatever the broker holds.
    With users, `viewer` sees the topics it may read and its own connections (all of them
    when it may read everything)."""
    readable = viewer.subscribe if viewer is not None and broker.accounts.has_users else None
    if readable is not None and readable.everything:
        readable = None
    room = broker.config.max_frame_bytes // 2
    reply: dict[str, Any] = {"server": server_totals(broker), "topics": {}, "connections": [],
                             "more": {"topics": None, "connections": None}}
    room -= len(msgpack.packb(reply))
    subscribers = _subscribers_per_topic(broker)
    for name in sorted(broker.topics) if query.topic_limit else ():
        if query.after_topic is not None and name <= query.after_topic:
            continue
        if query.pattern is not None and not pattern_matches(query.pattern, name):
            continue
        if readable is not None and readable.refuse_topic(name) is not None:
            continue
        entry = topic_entry(broker, name, subscribers.get(name, 0))
        room -= len(msgpack.packb({name: entry}))
        if len(reply["topics"]) >= query.topic_limit or room < 0:
            reply["more"]["topics"] = max(reply["topics"], default=query.after_topic or "")
            break
        reply["topics"][name] = entry
    if query.connection_limit:
        for connection in sorted(broker.sessions, key=lambda c: c.id):
            if connection.id <= query.after_connection or (
                    readable is not None and connection.account is not viewer):
                continue
            entry = connection_entry(connection)
            room -= len(msgpack.packb(entry))
            if len(reply["connections"]) >= query.connection_limit or room < 0:
                listed = reply["connections"]
                reply["more"]["connections"] = listed[-1]["id"] if listed else \
                    query.after_connection
                break
            reply["connections"].append(entry)
    return reply


def server_totals(broker: BrokerCore) -> dict[str, Any]:
    config = broker.config
    return {
        "name": config.server_name, "protocol": p.PROTOCOL_VERSION,
        "epoch": broker.epoch, "pid": os.getpid(),
        "uptime_s": round(broker.clock.monotonic() - broker.started_s, 3),
        "on_full": config.on_full,
        "retain_messages": config.retention.max_messages,
        "retain_bytes": config.retention.max_bytes,
        "connections": len(broker.sessions), "durables": len(broker.durables),
        "topics": len(broker.topics), "retained_bytes": broker.budget.used_bytes,
        # With --data-dir: the topics' bytes on disk (retained_bytes is what memory holds).
        "disk_bytes": sum(t.retained_bytes for t in broker.topics.values())
        if broker.storage.persistent else None,
        "max_memory_bytes": broker.budget.limit_bytes,
        "limits": config.limits_summary(),
        "counters": dict(broker.counters),
        "auth": _auth(broker),
        "host": config.host,  # where it listens: loopback keeps strangers on this machine
    }


def _auth(broker: BrokerCore) -> dict[str, Any]:
    """How clients log in, and what one that names nobody may publish: what a client (the
    standings) checks to warn that strangers could write its topics."""
    accounts = broker.accounts
    table = accounts.table
    if table is None:
        return {"mode": "token" if accounts.token else "anyone"}
    anonymous = table.users.get(table.anonymous) if table.anonymous else None
    return {"mode": "users", "anonymous_publish": None if anonymous is None else {
        "allow": list(anonymous.publish.allow), "deny": list(anonymous.publish.deny)}}


def _subscribers_per_topic(broker: BrokerCore) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name in broker.topics:
        count = len(broker.router.subscribers(name))  # type: ignore[arg-type]
        if count:
            counts[name] = count
    return counts


def topic_entry(broker: BrokerCore, name: str, subscribers: int) -> dict[str, Any]:
    t = broker.topics[name]
    return {"published": t.published_total, "retained": t.retained,
            "retained_bytes": t.retained_bytes, "first_seq": t.first_seq,
            "next_seq": t.next_seq, "evicted": t.evicted_total, "subscribers": subscribers}


def connection_entry(connection: Session) -> dict[str, Any]:
    subs = list(connection.subscriptions.values())
    delivered, gaps, missed = connection.delivery.totals_of_subscriptions()
    return {
        "id": connection.id, "name": connection.client_name, "peer": connection.peer,
        "user": connection.account.name if connection.account is not None else None,
        "published": connection.published, "delivered": delivered, "gaps": gaps,
        "missed": missed, "pending": sum(s.pending() for s in subs),
        "unacked": sum(s.inflight for s in subs),
        "write_buffer_bytes": connection.buffered_bytes(),
        "throttled_s": round(connection.throttled_s, 3),
        "subscriptions_total": len(subs),
        "subscriptions": [
            {"sid": s.sid, "pattern": s.pattern, "durable": s.durable,
             "delivered": s.delivered, "pending": s.pending(), "unacked": s.inflight,
             "gaps": s.gaps, "missed": s.missed}
            for s in subs[:SUBSCRIPTIONS_LISTED]
        ],
    }
