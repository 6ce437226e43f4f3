"""Replaying recorded live timing into the broker, at its own pace or faster.

Messages keep the spacing they had in the session, divided by --speed (or
none at all with --as-fast-as-possible). Starting part-way with --from first
publishes each topic's state at that moment, merged from everything before
it, so a consumer sees a complete picture from its first message.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from broker.progress import Progress
from f1vocab.state import merge
from producer.livetiming.feed import FeedMessage
from producer.livetiming.publisher import LivePublisher
from producer.pacing import Pacer

log = logging.getLogger("slipstream.livetiming")


@dataclass
class ReplayOptions:
    speed: float = 1.0  # 0 means as fast as possible
    start_s: float = 0.0  # session time to start at (seconds from the first message)
    loop: bool = False
    name: str = ""  # what is replayed (its folder or file), said in live.session_start


def format_clock(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 3600:02d}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def session_times(messages: list[FeedMessage]) -> list[float]:
    """Seconds into the session of each message, never going backwards.

    Built from the gaps between consecutive messages, with a backwards step
    counted as none: one message with an odd timestamp (another clock, a
    skew) can neither stall a replay nor release everything after it at once.
    """
    times = []
    elapsed = 0.0
    previous = messages[0].sort_key() if messages else 0.0
    for message in messages:
        key = message.sort_key()
        elapsed += max(0.0, key - previous)
        previous = key
        times.append(elapsed)
    return times


def state_at(messages: list[FeedMessage], until_s: float) -> tuple[list[FeedMessage], int]:
    """Per topic, one snapshot merged from every message before `until_s`; and where to resume."""
    states: dict[str, FeedMessage] = {}
    resume = 0
    for index, (message, at) in enumerate(zip(messages, session_times(messages), strict=True)):
        if at >= until_s:
            break
        resume = index + 1
        earlier = states.get(message.topic)
        if earlier is None or message.snapshot or not isinstance(message.data, dict) \
                or not isinstance(earlier.data, dict) or message.topic.endswith(".z"):
            data = message.data
        else:
            data = merge(earlier.data, message.data)
        states[message.topic] = FeedMessage(message.topic, data, message.timestamp,
                                            message.offset_s, snapshot=True)
    return list(states.values()), resume


async def replay(messages: list[FeedMessage], publisher: LivePublisher,
                 options: ReplayOptions) -> None:
    """Publish `messages` in order, paced like the session; forever with options.loop."""
    if not messages:
        log.warning("nothing to replay")
        return
    rounds = 0
    while True:
        rounds += 1
        await _replay_once(messages, publisher, options)
        if not options.loop:
            return
        log.info("replay round %d done; starting again", rounds)


async def _replay_once(messages: list[FeedMessage], publisher: LivePublisher,
                       options: ReplayOptions) -> None:
    # Each round is a session of its own: consumers start their state again.
    await publisher.start_session(name=options.name, start=format_clock(options.start_s))
    first = 0
    if options.start_s > 0:
        snapshots, first = state_at(messages, options.start_s)
        for message in snapshots:
            await publisher.publish(message)
        log.info("starting at %s: %d topics' state published, %d messages skipped",
                 format_clock(options.start_s), len(snapshots), first)
    times = session_times(messages)
    pacer = Pacer(options.speed)
    with Progress("replay", len(messages) - first, "msg") as progress:
        for index in range(first, len(messages)):
            await pacer.wait_until(times[index] - options.start_s)
            await publisher.publish(messages[index])
            progress.advance(1, f"session time {format_clock(times[index])}")
    await publisher.client.flush()
