"""The broker's settings, one frozen object from the command line (broker/__main__.py).

Every part of the broker reads its limits from here: the sans-I/O core
(broker/server/core.py, broker/server/session.py, broker/server/delivery.py) and the asyncio
loop around it (broker/server/server.py). docs/protocol.md, "Limits", says what
each cap protects against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from broker.storage.datadir import FsyncPolicy
from broker.storage.segments import DEFAULT_SEGMENT_BYTES
from broker.storage.topics import Retention
from broker.tls import TlsFiles
from broker.users.table import UserTable
from broker.wire import protocol as p

OnFull = Literal["drop", "block"]
MAX_WINDOW = 1_000_000  # a subscription's credit, at most


@dataclass(frozen=True)
class BrokerConfig:
    host: str = "127.0.0.1"
    port: int = p.DEFAULT_PORT
    retention: Retention = field(default_factory=Retention)
    on_full: OnFull = "drop"
    max_frame_bytes: int = p.DEFAULT_MAX_FRAME_BYTES
    token: str | None = None
    # --users: who may connect and do what (broker/users/); None: --token, or anyone.
    users: UserTable | None = None
    users_file: Path | None = None  # where `users` came from: SIGHUP reads it again
    server_name: str = "slipstream"
    # A connection whose socket takes no bytes for this long is cut off.
    write_stall_timeout_s: float = 10.0
    handshake_timeout_s: float = 5.0
    # The sender waits for the socket once this much is queued on it.
    write_high_water_bytes: int = 1024 * 1024
    # Caps on one MSG frame, so one busy topic cannot starve the others.
    max_run_messages: int = 4096
    max_run_bytes: int = 256 * 1024
    # Caps on what clients can make the broker hold (0 = no limit for the rates).
    max_connections: int = 1000
    max_handshakes: int = 128  # connections that have not finished HELLO, at once
    max_handshakes_per_address: int = 64  # of those, from one source address
    max_subscriptions: int = 1000  # per connection
    # Topics followed: a subscription costs an entry per topic it matches (a wildcard over
    # thousands of topics, thousands), checked when it is made.
    max_followed_topics: int = 100_000  # per connection, over its subscriptions
    max_followed_topics_total: int = 1_000_000  # over the whole broker
    max_topics: int = 10_000
    max_durables: int = 10_000
    max_memory_bytes: int = 1024 * 1024 * 1024  # payload bytes retained across all topics
    topic_ttl_s: float = 24 * 3600.0  # idle topics nobody subscribes to are forgotten
    durable_ttl_s: float = 24 * 3600.0  # offline durables are forgotten after this
    max_publish_rate_msgs: float = 0.0  # per connection, per second
    max_publish_rate_bytes: float = 0.0
    # --data-dir: topics, the epoch and durable positions on disk (None: in memory only).
    data_dir: Path | None = None
    fsync: FsyncPolicy = "interval"
    repair: bool = False
    verify: bool = False  # --verify: read every record of every segment at start
    retain_age_s: float = 0.0  # on disk: delete segments older than this (0: no limit)
    http: tuple[str, int] | None = None  # --http: the monitoring endpoints (monitor.py)
    tls: TlsFiles | None = None  # --tls-cert/--tls-key (and --tls-ca for client certificates)
    ws: tuple[str, int] | None = None  # --ws: the same protocol over WebSocket (websocket.py)
    ws_allow_origins: tuple[str, ...] = ()  # --ws-allow-origin: pages that may connect

    @property
    def segment_bytes(self) -> int:
        """Segments small enough that retention by bytes deletes about a quarter at a time."""
        return max(1 << 20, min(DEFAULT_SEGMENT_BYTES, self.retention.max_bytes // 4))

    @property
    def max_payload_bytes(self) -> int:
        return self.max_frame_bytes - p.FRAME_ROOM_BYTES

    def limits_summary(self) -> dict[str, float]:
        return {"max_connections": self.max_connections, "max_handshakes": self.max_handshakes,
                "max_handshakes_per_address": self.max_handshakes_per_address,
                "max_subscriptions": self.max_subscriptions, "max_topics": self.max_topics,
                "max_followed_topics": self.max_followed_topics,
                "max_followed_topics_total": self.max_followed_topics_total,
                "max_durables": self.max_durables, "max_memory_bytes": self.max_memory_bytes,
                "topic_ttl_s": self.topic_ttl_s, "durable_ttl_s": self.durable_ttl_s,
                "max_publish_rate_msgs": self.max_publish_rate_msgs,
                "max_publish_rate_bytes": self.max_publish_rate_bytes,
                "write_high_water_bytes": self.write_high_water_bytes,
                "write_stall_timeout_s": self.write_stall_timeout_s}
