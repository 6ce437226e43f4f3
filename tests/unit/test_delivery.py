"""Fan-out, credit, GAPs, acks and the block policy, driven by frames alone: the broker's
sans-I/O core (core.py, session.py, delivery.py in broker/server/) with no socket, no
event loop and a clock that moves only when told."""

from __future__ import annotations

import pytest

from broker.server.session import Wait
from broker.storage.topics import Retention
from broker.wire import protocol as p
from tests.sim.clock import VirtualClock
from tests.sim.peer import Peer, broker, frame_types, pub, runs_of


def test_a_subscriber_gets_every_message_once_in_seq_order_across_passes() -> None:
    core = broker(max_run_messages=3)
    publisher, subscriber = Peer(core), Peer(core)
    subscriber.send(p.Subscribe(1, "t", "earliest", None, 100))
    assert subscriber.received() == [p.Subscribed(1)]
    publisher.send(pub("t", *(b"%d" % i for i in range(10))))
    assert subscriber.messages() == [("t", i + 1, b"%d" % i) for i in range(10)]
    assert subscriber.received() == []  # nothing twice


def test_credit_stops_delivery_at_the_window_and_an_ack_resumes_it_exactly() -> None:
    core = broker()
    publisher, subscriber = Peer(core), Peer(core)
    subscriber.send(p.Subscribe(1, "t", "new", None, 3))
    subscriber.received()
    publisher.send(pub("t", *(b"m%d" % i for i in range(8))))
    assert [seq for _, seq, _ in subscriber.messages()] == [1, 2, 3]
    subscriber.send(p.Ack(1, 2))  # two of three: two more may come
    assert [seq for _, seq, _ in subscriber.messages()] == [4, 5]
    subscriber.send(p.Ack(1, 3))
    assert [seq for _, seq, _ in subscriber.messages()] == [6, 7, 8]
    [error] = subscriber.send(p.Ack(1, 4)) and subscriber.received()
    assert type(error) is p.Error and error.code == "bad_ack" and error.ref == 1


def test_a_subscriber_left_behind_gets_one_gap_with_the_exact_count_the_fast_one_gets_all(
        ) -> None:
    core = broker(retention=Retention(max_messages=5))
    publisher, fast, slow = Peer(core), Peer(core, "fast"), Peer(core, "slow")
    fast.send(p.Subscribe(1, "t", "new", None, 1000))
    slow.send(p.Subscribe(1, "t", "new", None, 2))
    fast.received(), slow.received()
    got, slow_got = [], []
    for i in range(20):
        publisher.send(pub("t", b"%d" % i))
        got += fast.messages()
        fast.send(p.Ack(1, 1))
        slow_got += slow.messages()  # it never acks: its window of 2 stays full
    assert [seq for _, seq, _ in got] == list(range(1, 21))
    assert [seq for _, seq, _ in slow_got] == [1, 2]
    slow.send(p.Ack(1, 2))
    gap, *deliveries = slow.received()
    assert type(gap) is p.Gap and (gap.sid, gap.topic, gap.first_seq, gap.missed) == (1, "t", 3, 13)
    assert "fell behind retention" in gap.reason
    assert [seq for frame in deliveries for run in runs_of(frame)
            for seq in range(run.first_seq, run.first_seq + len(run.payloads))] == [16, 17]
    assert core.totals["missed"] == 13 and core.totals["gaps"] == 1


def test_interleaved_topics_reach_a_version_2_subscriber_as_one_msgm_per_pass() -> None:
    core = broker()
    publisher, subscriber = Peer(core), Peer(core)
    subscriber.send(p.Subscribe(7, "t.>", "new", None, 1000))
    subscriber.received()
    for i in range(30):
        publisher.send(pub(f"t.{i % 3}", b"%d" % i))
    subscriber.session.send_pass()
    data = b"".join(subscriber.session.data_to_send())
    assert frame_types(data) == [p.FrameType.MSGM]
    runs = [run for frame in subscriber.decoder.feed(data) for run in runs_of(frame)]
    assert sorted((run.topic, run.first_seq, len(run.payloads)) for run in runs) == [
        ("t.0", 1, 10), ("t.1", 1, 10), ("t.2", 1, 10)]


def test_a_version_1_subscriber_gets_plain_msg_frames() -> None:
    core = broker()
    publisher, subscriber = Peer(core), Peer(core, version=1)
    subscriber.send(p.Subscribe(1, "t.>", "new", None, 1000))
    subscriber.received()
    publisher.send(pub("t.a", b"1"), pub("t.b", b"2"))
    subscriber.session.send_pass()
    data = b"".join(subscriber.session.data_to_send())
    assert frame_types(data) == [p.FrameType.MSG, p.FrameType.MSG]


def test_block_policy_waits_for_the_ack_that_frees_room_and_loses_nothing() -> None:
    core = broker(on_full="block", retention=Retention(max_messages=4))
    publisher, subscriber = Peer(core), Peer(core)
    subscriber.send(p.Subscribe(1, "t", "new", None, 2))
    subscriber.received()
    assert publisher.send(pub("t", *(b"%d" % i for i in range(10)), confirm=9)) is Wait.ROOM
    assert publisher.session.blocked_on is core.topics["t"]
    assert publisher.received() == []  # not confirmed while any of it waits
    seqs: list[int] = []
    while len(seqs) < 10:
        got = subscriber.messages()
        assert got, "the subscriber must always have something while the publisher waits"
        seqs += [seq for _, seq, _ in got]
        subscriber.send(p.Ack(1, len(got)))
        publisher.session.act()
    assert seqs == list(range(1, 11))
    assert publisher.received() == [p.PublishAck(9, 1, 10)]
    assert core.totals["missed"] == 0


def test_block_policy_keeps_a_run_consecutive_while_another_publisher_waits_its_turn() -> None:
    core = broker(on_full="block", retention=Retention(max_messages=3))
    first, second, subscriber = Peer(core, "first"), Peer(core, "second"), Peer(core)
    subscriber.send(p.Subscribe(1, "t", "new", None, 100))
    subscriber.received()
    assert first.send(pub("t", b"a1", b"a2", b"a3", b"a4", b"a5", confirm=1)) is Wait.ROOM
    assert second.send(pub("t", b"b1", confirm=2)) is Wait.ROOM  # the topic is held
    payloads = []
    for _ in range(10):
        got = subscriber.messages()
        payloads += [payload for _, _, payload in got]
        if got:
            subscriber.send(p.Ack(1, len(got)))
        first.session.act()
        second.session.act()
    assert payloads == [b"a1", b"a2", b"a3", b"a4", b"a5", b"b1"]
    assert first.received() == [p.PublishAck(1, 1, 5)]
    assert second.received() == [p.PublishAck(2, 6, 1)]


def test_a_durable_resumes_after_what_it_acknowledged_on_another_connection() -> None:
    core = broker()
    publisher, reader = Peer(core), Peer(core)
    reader.send(p.Subscribe(1, "t", "earliest", "keeper", 100))
    reader.received()
    publisher.send(pub("t", *(b"%d" % i for i in range(5))))
    assert len(reader.messages()) == 5
    reader.send(p.Ack(1, 3))
    again = Peer(core)
    [error] = again.send(p.Subscribe(1, "t", "earliest", "keeper", 100)) and again.received()
    assert type(error) is p.Error and error.code == "durable_in_use"
    reader.session.end()  # the connection is gone
    again.send(p.Subscribe(2, "t", "earliest", "keeper", 100))
    subscribed, *deliveries = again.received()
    assert subscribed == p.Subscribed(2)
    assert [(run.first_seq, len(run.payloads)) for frame in deliveries
            for run in runs_of(frame)] == [(4, 2)]


def test_the_rate_limit_asks_the_loop_to_wait_by_the_virtual_clock() -> None:
    core = broker(max_publish_rate_msgs=10.0)
    publisher = Peer(core)
    clock = core.clock
    assert isinstance(clock, VirtualClock)
    assert publisher.send(pub("t", *([b"x"] * 10))) is Wait.READ  # a second's worth saved up
    assert publisher.send(pub("t", *([b"x"] * 5))) is Wait.RATE
    assert publisher.session.delay_s == pytest.approx(0.5)
    clock.advance(0.5)
    assert publisher.session.act() is Wait.READ  # acted on once it waited
    assert core.topics["t"].next_seq == 16


def test_the_memory_budget_evicts_under_drop_and_the_subscriber_hears_the_exact_count(
        ) -> None:
    core = broker(max_memory_bytes=1000, max_frame_bytes=64 * 1024)
    publisher, subscriber = Peer(core), Peer(core)
    subscriber.send(p.Subscribe(1, "t", "new", None, 1))
    subscriber.received()
    first = []
    for _ in range(30):
        publisher.send(pub("t", b"x" * 100))
        first += subscriber.messages()  # a window of 1, never acked
    assert core.budget.used_bytes <= 1000
    assert [seq for _, seq, _ in first] == [1]
    subscriber.send(p.Ack(1, 1))
    gap = subscriber.received()[0]
    assert type(gap) is p.Gap and gap.first_seq == 2
    assert gap.missed == core.topics["t"].first_seq - 2 == core.counters["budget_evictions"] - 1


def test_a_pass_ends_after_frames_per_pass_and_a_stats_request_ends_it_at_once() -> None:
    from broker.server.session import FRAMES_PER_PASS
    core = broker()
    peer = Peer(core)
    assert peer.send(*[p.Ping(i) for i in range(FRAMES_PER_PASS + 1)]) is Wait.TURN
    assert peer.session.act() is Wait.READ
    assert peer.send(p.StatsRequest(1, None), p.Ping(1)) is Wait.TURN
    assert peer.session.act() is Wait.READ
    frames = peer.received()
    assert [type(f) for f in frames[-2:]] == [p.StatsReply, p.Pong]


def test_garbage_after_good_frames_acts_on_them_then_closes_with_a_fatal_error() -> None:
    core = broker()
    peer = Peer(core)
    peer.session.receive_data(p.encode(pub("t", b"ok", confirm=1)) + b"\x00\x00\x00\x02\xc1\xc1")
    assert peer.session.act() is Wait.CLOSE
    ack, error = peer.received()
    assert ack == p.PublishAck(1, 1, 1)
    assert type(error) is p.Error and error.fatal and error.code == "bad_frame"


def test_wildcards_pay_for_the_topics_they_follow_per_connection_and_in_all() -> None:
    core = broker(max_followed_topics=250, max_followed_topics_total=350)
    publisher, greedy, other = Peer(core), Peer(core, "greedy"), Peer(core, "other")
    for i in range(100):
        publisher.send(pub(f"t.{i}", b"x"))
    greedy.send(p.Subscribe(1, "t.>"), p.Subscribe(2, "t.*"), turns=True)  # 200 followed
    assert greedy.received() == [p.Subscribed(1), p.Subscribed(2)]
    greedy.send(p.Subscribe(3, ">"))  # 100 more: 300 > 250
    [error] = greedy.received()
    assert type(error) is p.Error and (error.code, error.ref, error.fatal) == (
        "too_many_followed_topics", 3, False)
    assert "would follow 100 topics more" in error.message
    assert "--max-followed-topics;" in error.message
    other.send(p.Subscribe(1, "t.>"), p.Subscribe(2, "t.>"), turns=True)  # 400 > 350 in all
    subscribed, refused = other.received()
    assert subscribed == p.Subscribed(1)
    assert type(refused) is p.Error and "--max-followed-topics-total" in refused.message
    assert (core.followed, greedy.session.delivery.followed) == (300, 200)
    greedy.send(p.Unsubscribe(1))  # what it follows is given back
    greedy.received()
    assert (core.followed, greedy.session.delivery.followed) == (200, 100)
    publisher.send(pub("t.new", b"x"))  # a topic born later joins its subscriptions
    assert (core.followed, greedy.session.delivery.followed) == (202, 101)
