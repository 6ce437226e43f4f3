"""The broker's state and its rules, sans-I/O: topics, subscriptions, durables, budgets.

Everything the broker knows lives here, and nothing here waits: no socket, no
task, no sleep, and the time comes from a `Clock`. Each connection is a
`Session` (broker/server/session.py) that calls in here to publish, subscribe and
acknowledge; fan-out to the connections goes through their `Delivery`
(broker/server/delivery.py). broker/server/server.py runs this under asyncio;
tests/sim/broker.py runs the same objects under a deterministic simulation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, Protocol

from broker.errors import ProtocolError, StorageError
from broker.limits import LogThrottle
from broker.server import stats as broker_stats
from broker.server.clock import SYSTEM_CLOCK, Clock
from broker.server.config import MAX_WINDOW, BrokerConfig
from broker.server.delivery import Cursors, Delivery
from broker.server.durables import Durables
from broker.server.routing import Router, echo, validate_pattern, validate_topic
from broker.storage.datadir import DataDir
from broker.storage.files import Files
from broker.storage.segments import REAL_FILES
from broker.storage.storage import DiskStorage, MemoryStorage, sync_topics
from broker.storage.storage import TopicStorage as Topic
from broker.storage.topics import ByteBudget
from broker.users.accounts import Account, Accounts
from broker.users.table import UserTable
from broker.wire import protocol as p

if TYPE_CHECKING:
    from broker.server.session import Session


class Handshaking(Protocol):
    """A connection in its handshake (TLS, then HELLO): where from, and whether it has
    said anything yet (a Session, or broker/server/tls_gate.py's TlsGate)."""

    address: str

    def said_something(self) -> bool: ...

log = logging.getLogger("slipstream.broker")


class BrokerCore:
    """One broker's topics, subscriptions and durables, and the caps on them.

    Its concerns, each a section below: the data directory (load, save
    durables), admission (how many connections and handshakes), housekeeping
    (TTLs, age), topics, subscriptions and durables, and the byte budget with
    the block policy's "what may be evicted?". `on_room_freed(topic)` is how a
    publisher blocked on `topic` hears that it may try again.
    """

    def __init__(self, config: BrokerConfig, clock: Clock = SYSTEM_CLOCK,
                 files: Files | None = None) -> None:
        self.config = config
        self.clock = clock
        self.epoch = clock.wall_us()  # tells clients a restarted broker from the same one
        self.started_s = clock.monotonic()
        self.budget = ByteBudget(config.max_memory_bytes)
        self.storage: MemoryStorage | DiskStorage = MemoryStorage(config.retention, self.budget)
        if config.data_dir is not None:  # `files`: the OS's, or a simulator's
            self.storage = DiskStorage(
                DataDir(config.data_dir, config.fsync, files or REAL_FILES), config.retention,
                self.budget, config.retain_age_s, config.segment_bytes, config.repair,
                config.verify)
        self.storage_failing = False  # the last write to --data-dir failed
        self.topics: dict[str, Topic] = {}
        self.router: Router[Cursors] = Router()
        self.durables = Durables(config.max_durables)
        self.accounts = Accounts(config, clock.monotonic, config.users)
        self._creators: dict[str, Account] = {}  # topic -> the user that created it
        self.sessions: set[Session] = set()
        self.followed = 0  # (subscription, topic) pairs in the broker: what wildcards cost
        # Connections in their handshake, oldest first (TLS, then HELLO): when the slots
        # are full, the oldest makes room, so idle sockets cannot lock anyone out.
        self.handshaking: dict[Handshaking, None] = {}
        # Totals of what the limits refused or removed, shown in STATS.
        self.counters: dict[str, int] = dict.fromkeys(
            ("refused_connections", "dropped_handshakes", "budget_evictions", "expired_topics",
             "expired_durables", "slow_consumers"), 0)
        self.log_throttle = LogThrottle(log)
        # Since the start, for monitoring (broker/server/monitor.py): only ever grow.
        self.totals: dict[str, int] = dict.fromkeys(
            ("published", "delivered", "gaps", "missed", "unreadable", "bytes_in",
             "bytes_out"), 0)
        self.state: Literal["starting", "accepting", "stopping"] = "starting"
        self.on_room_freed: Callable[[Topic], None] = lambda topic: None
        self._last_publish_s: dict[Topic, float] = {}
        # A topic created again after it expired starts above every seq it had.
        self._expired_seq_floor = 1
        # Block policy: a publisher whose run waits for room holds its topic, so the
        # run's seqs stay consecutive; others publishing there wait their turn.
        self._held: dict[Topic, Session] = {}

    # --- the data directory ------------------------------------------------------

    def load(self) -> None:
        """Open DIR: its lock, its epoch, every topic (checked) and the durable positions."""
        epoch, topics, durables, notes = self.storage.open()
        if epoch is None:
            return  # in memory: nothing to load
        self.epoch = epoch
        for note in notes:
            log.warning("%s", note)
        now = self.clock.monotonic()
        for topic in topics:
            self.topics[topic.name] = topic
            self.router.add_topic(topic.name)
            self._last_publish_s[topic] = now
        self.durables.load(durables, now)
        log.info("data directory %s: epoch %d, %d topics, %d durables", self.config.data_dir,
                 self.epoch, len(self.topics), len(self.durables))

    def topics_to_sync(self) -> list[Topic]:
        return [t for t in self.topics.values() if t.unsynced] if self.storage.syncs_topics \
            else []

    def sync_all(self) -> None:
        for error in sync_topics(self.topics.values()):
            log.error("%s", error)
        if self.storage.persistent:
            self.save_durables()

    def save_durables(self) -> bool:
        """Save every durable's positions now; False (and tried again later) if not."""
        self.durables.changed = False
        try:
            self.storage.save_durables(self.durables.positions())
        except OSError as exc:
            self.durables_not_saved(exc)
            return False
        return True

    def durables_not_saved(self, exc: OSError) -> None:
        self.durables.changed = True  # the next sync tries again
        self.log_throttle.log(logging.ERROR, "durables", "cannot save durable positions in "
                              "%s: %s; trying again", self.config.data_dir, exc.strerror or exc)

    def durables_moved(self) -> None:
        """A durable's positions changed: written with the next sync (or now, under always)."""
        if not self.storage.persistent:
            return
        if self.storage.syncs_periodically:
            self.durables.changed = True
        else:
            self.save_durables()

    def close(self) -> None:
        self.sync_all()
        for topic in self.topics.values():
            topic.release()
        self.storage.close()

    # --- admission ---------------------------------------------------------------

    def refusal(self, pending: int = 0) -> p.Error | None:
        """A fatal ERROR for a new connection over a cap, or None to let it in (`pending`:
        connections still in their TLS handshake, which count too)."""
        config = self.config
        if len(self.sessions) + pending >= config.max_connections:
            return p.Error("too_many_connections", f"the broker holds its maximum of "
                           f"{config.max_connections:,} connections (--max-connections)",
                           None, True)
        return None

    def handshake_started(self, session: Handshaking) -> Handshaking | None:
        """`session` starts its handshake; the one to drop to make room for it, if any: of
        its own address when that address holds --max-handshakes-per-address, else of all
        when --max-handshakes are taken, the oldest that has said nothing yet (or the
        oldest, if all have: a byte and then silence earns no seat). A client sends its
        HELLO at once: sockets that say nothing make room for it, however fast they
        come back."""
        config = self.config
        # The newcomer is never its own victim: it has had no time to say anything yet.
        # The table holds at most --max-handshakes, so a scan of it is cheap.
        others = list(self.handshaking)
        self.handshaking[session] = None
        same_address = [s for s in others if s.address == session.address]
        if len(same_address) >= config.max_handshakes_per_address:
            return _oldest_silent(same_address)
        if len(others) >= config.max_handshakes:
            return _oldest_silent(others)
        return None

    def handshake_ended(self, session: Handshaking) -> None:
        """Through (or dropped, or gone): its slot is free."""
        self.handshaking.pop(session, None)

    def reload_users(self, table: UserTable) -> list[tuple[Session, str, str]]:
        """A new users file (SIGHUP): the connections that are no longer allowed, with the
        fatal ERROR each gets; every other connection goes on under the new rules."""
        gone = dict(self.accounts.load(table))
        closing: list[tuple[Session, str, str]] = []
        for session in self.sessions:
            account = session.account
            if account is None:
                continue
            if account in gone:
                closing.append((session, "auth", gone[account]))
                continue
            refused = _refused_subscription(session, account)
            if refused is not None:
                closing.append((session, "permission_denied", refused))
        return closing

    # --- housekeeping ------------------------------------------------------------

    def expire(self, now_s: float | None = None) -> None:
        """Forget idle topics nobody reads and durables nobody has used; age out segments."""
        now = self.clock.monotonic() if now_s is None else now_s
        ttl = self.config.durable_ttl_s
        for name in self.durables.expired(now, ttl):
            self.durables_moved()
            self.counters["expired_durables"] += 1
            log.info("forgot durable %s: unused for %g s (--durable-ttl)", echo(name), ttl)
        for topic in self.topics.values():
            if topic.expire_by_age():
                self.notify(topic)
        if not self.storage.forgets_idle_topics:
            return  # on disk, topics are not forgotten: --retain-age bounds them
        ttl = self.config.topic_ttl_s
        for topic, last in list(self._last_publish_s.items()):
            if now - last > ttl and self._expirable(topic):
                self._forget_topic(topic)
                log.info("forgot topic %s: no publish for %g s and no subscriber (--topic-ttl)",
                         echo(topic.name), ttl)

    def _expirable(self, topic: Topic) -> bool:
        if any(True for _ in self.router.subscribers(topic.name)):
            return False
        return not self.durables.owe(topic.name, topic.next_seq)

    def _forget_topic(self, topic: Topic) -> None:
        self._expired_seq_floor = max(self._expired_seq_floor, topic.next_seq)
        self.durables.topic_forgotten(topic.name)
        del self.topics[topic.name]
        self.router.remove_topic(topic.name)
        self._last_publish_s.pop(topic, None)
        self._held.pop(topic, None)
        creator = self._creators.pop(topic.name, None)
        if creator is not None:
            creator.topics -= 1
        topic.release()
        self.counters["expired_topics"] += 1

    # --- topics and subscriptions -------------------------------------------

    def topic(self, name: str, creator: Account | None = None) -> Topic:
        """The log of topic `name`, created (and routed) on first use (by `creator`,
        within its quota)."""
        topic = self.topics.get(name)
        if topic is None:
            validate_topic(name)
            if len(self.topics) >= self.config.max_topics:
                raise ProtocolError(
                    f"cannot create topic {echo(name)}: the broker holds its maximum of "
                    f"{self.config.max_topics:,} topics (--max-topics)", code="too_many_topics")
            if creator is not None and creator.topics >= creator.limits.topics:
                raise ProtocolError(
                    f"cannot create topic {echo(name)}: "
                    f"{creator.share_note(f'{creator.limits.topics:,} topics')}",
                    code="too_many_topics")
            try:
                topic = self.storage.create(name, self._expired_seq_floor)
            except StorageError as exc:
                raise ProtocolError(str(exc), code="storage") from None
            self.topics[name] = topic
            if creator is not None:
                creator.topics += 1
                self._creators[name] = creator
            for sub in self.router.add_topic(name, self._admits(name)):
                sub.start_at(topic, topic.created_seq)  # born after the subscription: all new
                self._follow(sub.owner, 1)  # counted; the caps are checked at SUB (see there)
        self._last_publish_s[topic] = self.clock.monotonic()
        return topic

    def _admits(self, name: str) -> Callable[[Cursors], bool] | None:
        """Which subscriptions a new topic joins: those whose user is not denied it."""
        if not self.accounts.has_users:
            return None

        def admits(sub: Cursors) -> bool:
            account = sub.owner.account
            return account is None or not account.subscribe.denies(name)
        return admits

    def _follow(self, delivery: Delivery, count: int) -> None:
        """`count` more (or fewer) subscription-topic pairs for `delivery`'s connection."""
        delivery.followed += count
        self.followed += count
        if delivery.account is not None:
            delivery.account.followed += count

    def subscribe(self, delivery: Delivery, frame: p.Subscribe) -> Cursors:
        """The subscription a SUB asks for, at its start; ProtocolError if refused."""
        validate_pattern(frame.pattern)
        if not 1 <= frame.window <= MAX_WINDOW:
            raise ProtocolError(f"window {frame.window} is outside 1..{MAX_WINDOW:,}",
                                code="bad_subscribe")
        start = frame.start
        if not (start in ("new", "earliest") or (type(start) is int and start >= 1)):
            raise ProtocolError(f"start {start!r} is not 'new', 'earliest' or a seq >= 1",
                                code="bad_subscribe")
        account = delivery.account
        if account is not None:
            frame = self._check_account(account, frame)
        durable = self.durables.check(frame) if frame.durable else None
        matching = self.router.topics_matching(frame.pattern)  # O(matches): once per SUB
        if account is not None and account.subscribe.deny:
            matching = [name for name in matching if not account.subscribe.denies(name)]
        self._check_followed(delivery, frame.pattern, len(matching))
        sub = delivery.new_subscription(frame.sid, frame.pattern, frame.window, frame.durable)
        for name in self.router.add_subscriber(sub, frame.pattern, matching):
            topic = self.topics[name]
            if durable is not None:
                sub.start_at(topic, durable.acked.get(name, topic.created_seq))
            elif start == "new":
                sub.start_at(topic, topic.next_seq)
            elif start == "earliest":
                sub.start_at(topic, topic.first_seq)
            else:
                # A seq beyond the newest means "from the next message on" (nothing is
                # skipped); one below the oldest is reported as a GAP of what was evicted.
                sub.start_at(topic, min(int(start), topic.next_seq))
        if frame.durable and self.durables.take(sub):
            self._keep_new_durable(sub)  # may refuse: then nothing below is counted
        self._follow(delivery, len(sub.cursors))
        if account is not None:
            account.subscriptions += 1
        return sub

    def _check_account(self, account: Account, frame: p.Subscribe) -> p.Subscribe:
        """What the user may subscribe to and how much; the frame with its durable's name
        made the user's own (two users' "sqlite" are two durables)."""
        rules = account.subscribe
        if not rules.everything:
            reason = rules.refuse_pattern(frame.pattern)
            if reason is not None:
                raise ProtocolError(f"user {account.name!r} may not subscribe to "
                                    f"{echo(frame.pattern)}: {reason}",
                                    code="permission_denied")
        limit = account.limits.subscriptions
        if account.subscriptions >= limit:
            raise ProtocolError(f"SUB to {echo(frame.pattern)} refused: "
                                f"{account.share_note(f'{limit:,} subscriptions')}",
                                code="too_many_subscriptions")
        if not frame.durable or not account.durable_prefix:
            return frame
        key = account.durable_key(frame.durable)
        if key not in self.durables.by_name:
            prefix, limit = account.durable_prefix, account.limits.durables
            if sum(1 for name in self.durables.by_name if name.startswith(prefix)) >= limit:
                raise ProtocolError(f"cannot create durable {echo(frame.durable)}: "
                                    f"{account.share_note(f'{limit:,} durables')}",
                                    code="too_many_durables")
        return frame._replace(durable=key)

    def _check_followed(self, delivery: Delivery, pattern: str, wanted: int) -> None:
        """A subscription costs an entry per topic it follows: a wildcard over 2,000 topics,
        2,000. The caps hold at SUB; topics created later still join the subscriptions
        that match them (nobody's PUB is refused for a subscriber), which --max-topics
        bounds."""
        config = self.config
        for held, cap, whose, flag in (
                (delivery.followed, config.max_followed_topics, "this connection's",
                 "--max-followed-topics"),
                (self.followed, config.max_followed_topics_total, "the broker's",
                 "--max-followed-topics-total"),
                *self._account_followed(delivery.account)):
            if held + wanted > cap:
                raise ProtocolError(
                    f"SUB to {echo(pattern)} would follow {wanted:,} topics more, and "
                    f"{whose} subscriptions follow {held:,} already, of {cap:,} ({flag}; "
                    "a subscription costs one entry per topic it matches)",
                    code="too_many_followed_topics")

    @staticmethod
    def _account_followed(account: Account | None) -> list[tuple[int, int, str, str]]:
        if account is None:
            return []
        return [(account.followed, account.limits.followed_topics,
                 f"user {account.name!r}'s", "its quota")]

    def _keep_new_durable(self, sub: Cursors) -> None:
        """A new durable's positions are on disk before its SUBACK: a crash right after it
        must not forget it (it would resume at 'new' and skip what it never read)."""
        if not self.storage.persistent or self.save_durables():
            return
        assert sub.durable is not None
        self.router.remove_subscriber(sub)
        self.durables.forget(sub.durable)
        raise ProtocolError(f"durable {echo(sub.durable)} not created: its position could not "
                            f"be saved in {self.config.data_dir}", code="storage")

    def unsubscribe(self, sub: Cursors) -> None:
        """Forget a subscription; a durable one keeps its ack marks for the next owner."""
        self.router.remove_subscriber(sub)
        self._follow(sub.owner, -len(sub.cursors))
        if sub.owner.account is not None:
            sub.owner.account.subscriptions -= 1
        if sub.durable:
            self.durables.release(sub, self.clock.monotonic())
            self.durables_moved()
        for topic in sub.cursors:
            self.room_freed(topic)

    def detach(self, session: Session) -> None:
        """A connection ended: its subscriptions go, and so do the topics it held."""
        self.handshake_ended(session)
        for sub in session.subscriptions.values():
            self.unsubscribe(sub)
        session.subscriptions.clear()
        for topic in [t for t, holder in self._held.items() if holder is session]:
            self.release(topic)
        self.sessions.discard(session)

    # --- publishing and the budget -----------------------------------------------

    def notify(self, topic: Topic) -> None:
        """Tell every subscription of `topic` that it has something new to read."""
        for sub in self.router.subscribers(topic.name):
            sub.owner.mark(sub, topic)

    def keep_from(self, topic: Topic, publisher: Delivery | None) -> int:
        """Block policy: the oldest seq some other connection's subscription still needs."""
        oldest = topic.next_seq
        for sub in self.router.subscribers(topic.name):  # once per PUB run: a plain loop
            if sub.owner is not publisher and sub.acked[topic] < oldest:
                oldest = sub.acked[topic]
        return max(oldest, topic.first_seq)  # a mark behind a GAP protects nothing gone

    def make_room(self, wanted_bytes: int = 0) -> bool:
        """Keep retained bytes across all topics within --max-memory.

        Evicts the oldest messages of the largest topics (under `block`, only
        messages every subscriber has acknowledged) until `wanted_bytes` more
        fit, and a little further, so that one scan serves many publishes.
        Returns whether they fit. Subscribers behind get a GAP, as with
        per-topic retention.
        """
        budget = self.budget
        wanted_bytes += budget.reserved_bytes  # promised to runs already under way
        if budget.used_bytes + wanted_bytes <= budget.limit_bytes:
            return True
        target = budget.limit_bytes - wanted_bytes - budget.limit_bytes // 64
        block = self.config.on_full == "block"
        for topic in sorted(self.topics.values(), key=lambda t: t.retained_bytes, reverse=True):
            keep_from = self.keep_from(topic, None) if block else topic.next_seq
            evicted_before = topic.evicted_total
            topic.evict_for_budget(budget.used_bytes - target, keep_from)
            if topic.evicted_total != evicted_before:
                self.counters["budget_evictions"] += topic.evicted_total - evicted_before
                self.notify(topic)  # so that a subscriber behind hears of its GAP now
            if budget.used_bytes <= target:
                break
        return budget.used_bytes + wanted_bytes <= budget.limit_bytes

    def holder(self, topic: Topic) -> Session | None:
        return self._held.get(topic)

    def hold(self, topic: Topic, session: Session) -> None:
        self._held[topic] = session

    def release(self, topic: Topic) -> None:
        if self._held.pop(topic, None) is not None:
            self.room_freed(topic)  # the next publisher's turn

    def room_freed(self, topic: Topic) -> None:
        self.on_room_freed(topic)

    # --- stats -------------------------------------------------------------------

    def stats(self, options: dict[str, Any] | None = None,
              viewer: Account | None = None) -> dict[str, Any]:
        return broker_stats.build(self, broker_stats.StatsQuery(options), viewer)


def _refused_subscription(session: Session, account: Account) -> str | None:
    """Why one of `session`'s subscriptions is no longer allowed, if one is not."""
    rules = account.subscribe
    for sub in session.subscriptions.values():
        reason = rules.refuse_pattern(sub.pattern)
        denied = next((t.name for t in sub.cursors if rules.denies(t.name)), None)
        if reason is None and denied is not None:
            reason = f"it follows {echo(denied)}, which is now denied"
        if reason is not None:
            return (f"user {account.name!r} may no longer subscribe to {echo(sub.pattern)} "
                    f"({reason}; the users file was reloaded)")
    return None


def _oldest_silent(candidates: list[Handshaking]) -> Handshaking:
    """The first (oldest) of `candidates` that has sent nothing yet, else the first."""
    return next((s for s in candidates if not s.said_something()), candidates[0])
