"""Per-client queues: states conflate, events stay in order and are bounded, drops are told."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from consumer.dashboard.fanout import ClientQueue, Fanout, Update, parse_patterns


def state(topic: str, value: object) -> Update:
    return Update.encode(topic, "state", value)


def event(n: int) -> Update:
    return Update.encode("alerts.info", "event", {"n": n})


async def drain(queue: ClientQueue) -> list[dict[str, Any]]:
    frames = []
    while queue.depth:
        update = await queue.next()
        assert update is not None
        frames.append(json.loads(update.text))
    return frames


async def test_a_slow_client_gets_the_latest_state_in_its_original_place() -> None:
    queue = ClientQueue("websocket", "test", [">"], max_events=10)
    queue.offer(state("dashboard.tower", 1))
    queue.offer(state("live.TrackStatus", "yellow"))
    for n in range(2, 100):
        queue.offer(state("dashboard.tower", n))
    queue.offer(state("live.TrackStatus", "red"))
    assert queue.depth == 2
    assert [(f["topic"], f["data"]) for f in await drain(queue)] == [
        ("dashboard.tower", 99), ("live.TrackStatus", "red")]
    assert (queue.sent, queue.conflated, queue.dropped) == (2, 99, 0)


async def test_events_keep_their_order_and_overflow_drops_the_oldest_and_says_so() -> None:
    queue = ClientQueue("sse", "test", [">"], max_events=5)
    queue.offer(state("dashboard.tower", "t"))
    for n in range(12):
        queue.offer(event(n))
    assert queue.depth == 6  # one state and the five newest events
    frames = await asyncio.wait_for(drain_all(queue, 7), 1)
    assert frames[0] == {"topic": "dashboard.dropped", "kind": "notice",
                         "data": {"events": 7, "total": 7}}
    assert frames[1]["topic"] == "dashboard.tower"
    assert [f["data"]["n"] for f in frames[2:]] == [7, 8, 9, 10, 11]
    assert queue.dropped == 7


async def drain_all(queue: ClientQueue, count: int) -> list[dict[str, Any]]:
    frames = []
    for _ in range(count):
        update = await queue.next()
        assert update is not None
        frames.append(json.loads(update.text))
    return frames


async def test_next_waits_for_an_offer_and_returns_none_once_closed() -> None:
    queue = ClientQueue("websocket", "test", [">"], max_events=5)
    waiting = asyncio.create_task(queue.next())
    await asyncio.sleep(0)  # one turn of the loop, not a time: the task is now waiting
    assert not waiting.done()
    queue.offer(event(1))
    update = await asyncio.wait_for(waiting, 1)
    assert update is not None and update.kind == "event"
    closing = asyncio.create_task(queue.next())
    await asyncio.sleep(0)  # it waits for an offer when the queue closes
    assert not closing.done()
    queue.close()
    assert await asyncio.wait_for(closing, 1) is None


async def test_fanout_offers_only_what_each_client_asked_for() -> None:
    fanout = Fanout()
    everything = ClientQueue("websocket", "a", [">"], max_events=5)
    alerts = ClientQueue("sse", "b", parse_patterns("alerts.>,live.TrackStatus"), max_events=5)
    fanout.add(everything, [state("dashboard.tower", 0)])
    fanout.add(alerts, [state("dashboard.tower", 0), state("live.TrackStatus", "green")])
    fanout.publish(event(1))
    fanout.publish(state("dashboard.tower", 1))
    assert [f["topic"] for f in await drain(everything)] == ["dashboard.tower", "alerts.info"]
    assert [f["topic"] for f in await drain(alerts)] == ["live.TrackStatus", "alerts.info"]
    fanout.remove(alerts)
    assert list(fanout.clients) == [everything.id]
    assert await alerts.next() is None


def test_topic_patterns_are_checked() -> None:
    assert parse_patterns(None) == [">"]
    assert parse_patterns(" live.TrackStatus , alerts.> ") == ["live.TrackStatus", "alerts.>"]
    for bad in ("live..x", "a.>.b", ","):
        with pytest.raises(ValueError):
            parse_patterns(bad)
