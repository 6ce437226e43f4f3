"""Durable subscriptions: what the broker remembers of one between its connections.

A durable has a name, the pattern it was made for and, per topic, the first
seq not yet acknowledged. While a connection owns it, the owner's cursors are
the truth; when it lets go, their ack marks are kept here, and saved to
--data-dir by broker/server/core.py (broker/storage/datadir.py writes them). Sans-I/O: the
time of release is given, not read.
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.errors import ProtocolError
from broker.server.delivery import Cursors
from broker.server.routing import echo
from broker.storage.datadir import Positions
from broker.wire.protocol import Subscribe


@dataclass
class Durable:
    pattern: str
    acked: dict[str, int]
    owner: Cursors | None = None
    released_s: float = 0.0  # monotonic time its last owner let go


class Durables:
    """Every durable by name, and whether their positions changed since the last save
    (set by BrokerCore.durables_moved, which every change goes through)."""

    def __init__(self, max_durables: int) -> None:
        self.max_durables = max_durables
        self.by_name: dict[str, Durable] = {}
        self.changed = False

    def __len__(self) -> int:
        return len(self.by_name)

    def load(self, positions: Positions, now_s: float) -> None:
        for name, (pattern, acked) in positions.items():
            self.by_name[name] = Durable(pattern, acked, released_s=now_s)

    def check(self, frame: Subscribe) -> Durable | None:
        """The durable a SUB names, if it exists and may be taken; ProtocolError if not."""
        assert frame.durable
        durable = self.by_name.get(frame.durable)
        if durable is None:
            if len(self.by_name) >= self.max_durables:
                raise ProtocolError(
                    f"cannot create durable {echo(frame.durable)}: the broker holds its "
                    f"maximum of {self.max_durables:,} durables (--max-durables)",
                    code="too_many_durables")
            return None
        if durable.owner is not None:
            raise ProtocolError(
                f"durable {echo(frame.durable)} is in use by connection "
                f"{durable.owner.owner.describe()}", code="durable_in_use")
        if durable.pattern != frame.pattern:
            raise ProtocolError(
                f"durable {echo(frame.durable)} was created for pattern "
                f"{echo(durable.pattern)}, not {echo(frame.pattern)}", code="durable_pattern")
        return durable

    def take(self, sub: Cursors) -> bool:
        """`sub` owns its durable now; True when it is new."""
        assert sub.durable is not None
        durable = self.by_name.get(sub.durable)
        created = durable is None
        if durable is None:
            durable = self.by_name[sub.durable] = Durable(sub.pattern, {})
        durable.owner = sub
        return created

    def forget(self, name: str) -> None:
        del self.by_name[name]

    def release(self, sub: Cursors, now_s: float) -> None:
        """Its owner let go: keep its ack marks for the next one."""
        assert sub.durable is not None
        durable = self.by_name.get(sub.durable)
        if durable is not None:
            durable.acked = {topic.name: seq for topic, seq in sub.acked.items()}
            durable.owner = None
            durable.released_s = now_s

    def expired(self, now_s: float, ttl_s: float) -> list[str]:
        """Forget the durables nobody has owned for `ttl_s`; their names."""
        names = [name for name, durable in self.by_name.items()
                 if durable.owner is None and now_s - durable.released_s > ttl_s]
        for name in names:
            del self.by_name[name]
        return names

    def owe(self, topic_name: str, next_seq: int) -> bool:
        """Does an offline durable still need some of `topic_name`?"""
        return any(d.acked.get(topic_name, next_seq) < next_seq
                   for d in self.by_name.values() if d.owner is None)

    def topic_forgotten(self, topic_name: str) -> None:
        for durable in self.by_name.values():
            durable.acked.pop(topic_name, None)  # caught up: nothing of it is owed

    def positions(self) -> Positions:
        """What to save: an owned durable's marks are its owner's current ones."""
        positions = {}
        for name, durable in self.by_name.items():
            acked = durable.acked if durable.owner is None else {
                topic.name: seq for topic, seq in durable.owner.acked.items()}
            positions[name] = (durable.pattern, dict(acked))
        return positions
