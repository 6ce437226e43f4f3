"""What a user may publish to and subscribe to: allowed patterns, minus denied ones.

A topic may be published to when some `allow` pattern matches it and no
`deny` pattern does. A subscription pattern may be used when some `allow`
pattern covers every topic it could match (`live.>` covers `live.*`, not
`>`), and not every one of its topics is denied; topics a deny pattern
matches are then left out of it, as if they did not exist (NATS does the
same). Checked on each PUB from a bounded cache, so a publisher pays a dict
lookup.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from broker.server.routing import covers

EVERYTHING = ">"
_CACHE_ENTRIES = 4096  # topics remembered per rule set; forgotten all at once when full


@dataclass(frozen=True)
class Rules:
    """One direction's patterns (publish or subscribe) for one user."""

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    _verdicts: dict[str, str | None] = field(default_factory=dict, compare=False, repr=False)

    @property
    def everything(self) -> bool:
        """Allowed everywhere: the checks can be skipped."""
        return EVERYTHING in self.allow and not self.deny

    @property
    def nothing(self) -> bool:
        return not self.allow

    def describe(self) -> str:
        allowed = ", ".join(self.allow) or "nothing"
        return allowed + (f"; denied {', '.join(self.deny)}" if self.deny else "")

    def refuse_topic(self, topic: str) -> str | None:
        """Why `topic` may not be published to (None: it may), from the cache."""
        verdicts = self._verdicts
        verdict = verdicts.get(topic, "")
        if verdict == "":
            if len(verdicts) >= _CACHE_ENTRIES:
                verdicts.clear()
            verdict = verdicts[topic] = self._judge_topic(topic)
        return verdict

    def _judge_topic(self, topic: str) -> str | None:
        denied = next((d for d in self.deny if covers(d, topic)), None)
        if denied is not None:
            return f"denied by {denied!r}"
        if any(covers(a, topic) for a in self.allow):
            return None
        return f"not in the allowed patterns ({self.describe()})"

    def denies(self, topic: str) -> bool:
        """Whether a subscription should leave `topic` out."""
        return any(covers(d, topic) for d in self.deny)

    def refuse_pattern(self, pattern: str) -> str | None:
        """Why `pattern` may not be subscribed to (None: it may)."""
        denied = next((d for d in self.deny if covers(d, pattern)), None)
        if denied is not None:
            return f"every topic it matches is denied by {denied!r}"
        if any(covers(a, pattern) for a in self.allow):
            return None
        return f"no allowed pattern covers it ({self.describe()})"


ALLOW_ALL = Rules((EVERYTHING,))
