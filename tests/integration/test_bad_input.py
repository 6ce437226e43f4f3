"""Bad input against a real broker: each gets a clear ERROR and/or a disconnect, is logged
once, and never disturbs another client."""

from __future__ import annotations

import asyncio
import struct

import msgpack
import pytest

from broker import Client
from broker.wire import protocol as p
from tests.helpers import Processes, RawPeer, RunningBroker, wait_for


async def assert_broker_still_serves(broker: RunningBroker) -> None:
    async with Client(broker.address, name="bystander") as client:
        sub = await client.subscribe("check")
        await client.publish("check", "still here")
        assert (await anext(sub)).data == "still here"


def fatal_error(frames: list[p.Frame]) -> p.Error:
    errors = [frame for frame in frames if type(frame) is p.Error]
    assert len(errors) == 1, frames
    assert errors[0].fatal
    return errors[0]


async def test_garbage_bytes_get_an_error_and_a_disconnect(processes: Processes) -> None:
    broker = await processes.broker()
    peer = await RawPeer.connect(broker.port)
    peer.send_bytes(struct.pack(">I", 5) + b"\xc1\xc1\xc1\xc1\xc1")
    error = fatal_error(await peer.read_until_closed())
    assert error.code == "bad_frame" and "is not one msgpack value" in error.message
    await assert_broker_still_serves(broker)
    assert broker.log().count("is not one msgpack value") == 1


async def test_http_instead_of_the_protocol_is_told_what_it_reached(processes: Processes) -> None:
    broker = await processes.broker()
    peer = await RawPeer.connect(broker.port, name=None)
    peer.send_bytes(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    error = fatal_error(await peer.read_until_closed())
    assert error.code == "frame_too_large"
    assert "is the peer speaking the slipstream protocol?" in error.message
    await assert_broker_still_serves(broker)


async def test_oversize_frame_is_refused_before_it_is_read(processes: Processes) -> None:
    broker = await processes.broker("--max-frame", "64KiB")
    peer = await RawPeer.connect(broker.port)
    peer.send_bytes(struct.pack(">I", 3 * 1024 * 1024))
    error = fatal_error(await peer.read_until_closed())
    assert error.message.startswith("frame of 3,145,728 bytes")
    assert "exceeds max-frame 65,536" in error.message
    await assert_broker_still_serves(broker)


async def test_oversize_payload_is_rejected_but_the_connection_lives(processes: Processes) -> None:
    broker = await processes.broker("--max-frame", "64KiB")
    peer = await RawPeer.connect(broker.port)
    peer.send(p.Publish("big", [b"x" * 65000], 7))
    peer.send(p.Ping(1))
    error, pong = await peer.read_frames(2)
    assert error == p.Error("payload_too_large",
                            "payload of 65,000 bytes to 'big' exceeds max payload 64,512 "
                            "(max-frame minus 1024)", 7, False)
    assert pong == p.Pong(1)


async def test_truncated_frame_then_hangup_leaves_the_broker_unharmed(
        processes: Processes) -> None:
    broker = await processes.broker()
    peer = await RawPeer.connect(broker.port)
    whole = p.encode(p.Publish("t", [b"complete"], None))
    peer.send_bytes(whole + p.encode(p.Publish("t", [b"cut short"], None))[:9])
    await peer.close()
    await assert_broker_still_serves(broker)
    async with Client(broker.address) as client:
        assert (await client.stats())["topics"]["t"]["published"] == 1


async def test_unknown_frame_type_gets_a_non_fatal_error(processes: Processes) -> None:
    broker = await processes.broker()
    peer = await RawPeer.connect(broker.port)
    body = msgpack.packb([77, "from the future"])
    for _ in range(3):
        peer.send_bytes(struct.pack(">I", len(body)) + body)
    peer.send(p.Ping(5))
    frames = await peer.read_frames(4)
    assert frames[:3] == [p.Error("unknown_frame", "unknown frame type 77", None, False)] * 3
    assert frames[3] == p.Pong(5)
    assert broker.log().count("unknown frame type 77") == 1  # logged once, not per frame


async def test_first_frame_must_be_hello(processes: Processes) -> None:
    broker = await processes.broker()
    peer = await RawPeer.connect(broker.port, name=None)
    peer.send(p.Subscribe(1, ">", "new", None, 10))
    error = fatal_error(await peer.read_until_closed())
    assert (error.code, error.message) == ("handshake", "first frame must be HELLO, got Subscribe")


async def test_silent_client_is_dropped_after_the_handshake_timeout(processes: Processes) -> None:
    broker = await processes.broker("--handshake-timeout", "0.3")
    peer = await RawPeer.connect(broker.port, name=None)
    error = fatal_error(await peer.read_until_closed())
    assert (error.code, error.message) == ("handshake_timeout", "no HELLO within 0.3 s")


async def test_wrong_protocol_version_is_refused(processes: Processes) -> None:
    broker = await processes.broker()
    peer = await RawPeer.connect(broker.port, name=None)
    peer.send(p.Hello(99, "time traveller", None))
    error = fatal_error(await peer.read_until_closed())
    assert error.code == "version" and "protocol version 99 is not supported" in error.message


async def test_wrong_token_is_refused_and_logged_once(processes: Processes) -> None:
    broker = await processes.broker("--token", "pit-wall")
    peer = await RawPeer.connect(broker.port, name=None)
    peer.send(p.Hello(p.PROTOCOL_VERSION, "intruder", "garage"))
    error = fatal_error(await peer.read_until_closed())
    assert (error.code, error.message) == ("auth", "token missing or wrong")
    assert broker.log().count("token missing or wrong") == 1


async def test_requests_that_make_no_sense_get_named_errors(processes: Processes) -> None:
    broker = await processes.broker()
    peer = await RawPeer.connect(broker.port)
    peer.send(p.Ack(42, 1))
    peer.send(p.Subscribe(1, "a.>.b", "new", None, 10))
    peer.send(p.Subscribe(2, "ok", "sometime", None, 10))
    peer.send(p.Subscribe(3, "ok", "new", None, 0))
    peer.send(p.Publish("t", [], None))
    peer.send(p.Welcome(1, "me", 1, 1))
    frames = await peer.read_frames(6)
    assert [(f.code, f.ref) for f in frames] == [  # type: ignore[union-attr]
        ("unknown_sid", 42), ("bad_pattern", 1), ("bad_subscribe", 2), ("bad_subscribe", 3),
        ("bad_publish", None), ("unexpected_frame", None)]
    assert "start 'sometime' is not 'new', 'earliest' or a seq >= 1" in frames[2].message  # type: ignore[union-attr]


async def test_client_that_never_reads_is_cut_off_and_others_keep_up(
        processes: Processes) -> None:
    broker = await processes.broker("--write-timeout", "1")
    silent = await RawPeer.connect(broker.port, name="never-reads")
    silent.send(p.Subscribe(1, "flood", "new", None, 1_000_000))
    assert await silent.read_frames(1) == [p.Subscribed(1)]
    payload = b"x" * 60_000
    async with Client(broker.address, name="reader") as reader, \
               Client(broker.address, name="flooder") as flooder:
        sub = await reader.subscribe("flood")
        received = 0
        for n in range(1000):  # 60 MB: far more than the socket buffers hold
            await flooder.publish_bytes("flood", payload)
            if n % 50 == 49:
                for _ in range(50):
                    await anext(sub)
                    received += 1
        assert received == 1000
        async with asyncio.timeout(5):
            while any(c["name"] == "never-reads" for c in (await reader.stats())["connections"]):
                await asyncio.sleep(0.1)
    assert "closing #1 'never-reads'" in broker.log()
    assert "took no bytes for 1 s" in broker.log()
    await silent.close()


async def test_a_client_that_half_closes_still_gets_what_its_frames_owed(
        processes: Processes) -> None:
    """docs/protocol.md, Closing: no goodbye frame; frames read before the end are acted on."""
    broker = await processes.broker()
    peer = await RawPeer.connect(broker.port, name=None)
    peer.send_bytes(p.encode(p.Hello(1, "brief", None)) + p.encode(p.Publish("t", [b"a"], 7))
                    + p.encode(p.Ping(9)))
    peer.writer.write_eof()  # half-close: we send nothing more, and keep reading
    frames = await peer.read_until_closed()
    assert [type(f).__name__ for f in frames] == ["Welcome", "PublishAck", "Pong"]
    assert frames[1] == p.PublishAck(7, 1, 1)
    async with Client(broker.address) as client:
        assert (await client.stats())["topics"]["t"]["published"] == 1


async def test_a_fatal_error_reaches_a_client_that_sent_more_after_the_bad_frame(
        processes: Processes) -> None:
    """The broker half-closes and drains briefly after a fatal ERROR, so the reason arrives
    instead of a TCP reset, even when the client sent more that the broker will never read."""
    broker = await processes.broker()
    for _ in range(3):
        peer = await RawPeer.connect(broker.port)
        junk = struct.pack(">I", 5) + b"\xc1\xc1\xc1\xc1\xc1"  # not msgpack: fatal bad_frame
        peer.send_bytes(junk + p.encode(p.Publish("t", [b"x" * 60_000], None)) * 20)
        await peer.writer.drain()
        # A slow client: it reads only after the broker is done with it. What must be
        # there then is the ERROR and an orderly end, not a reset that discards it.
        await wait_for(lambda: _gone_from(broker, "raw"), "the broker to drop the client")
        frames = await peer.read_until_closed()
        assert [(f.code, f.fatal) for f in frames if type(f) is p.Error] == [("bad_frame", True)]
        await peer.close()


async def _gone_from(broker: RunningBroker, name: str) -> bool:
    async with Client(broker.address, name="probe") as client:
        return not any(c["name"] == name for c in (await client.stats())["connections"])


@pytest.mark.parametrize("version", [1, 2])
async def test_interleaved_topics_share_frames_only_with_a_version_2_client(
        processes: Processes, version: int) -> None:
    """One PUBM of 60 messages over three topics: a version 2 subscriber gets them in MSGM
    frames, a version 1 subscriber (a client written against the older doc) in MSGs only."""
    broker = await processes.broker()
    reader = await RawPeer.connect(broker.port, "reader", version=version)
    reader.send(p.Subscribe(1, "t.*", "new", None, 1000))
    assert await reader.read_frames(1) == [p.Subscribed(1)]
    writer = await RawPeer.connect(broker.port, "writer")
    writer.send_bytes(p.encode_publish_runs(
        [(f"t.{index % 3}", [b"%d" % index]) for index in range(60)]))
    types = await reader.read_frame_types(60)
    if version == 1:
        assert set(types) == {p.FrameType.MSG}
    else:
        assert p.FrameType.MSGM in types and len(types) < 60
    await reader.close()
    await writer.close()
