"""The codec, fed bytes directly: every frame type, any split, every kind of bad input."""

from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.errors import ProtocolError
from broker.wire import protocol as p

EVERY_FRAME: list[p.Frame] = [
    p.Hello(1, "printer", None),
    p.Hello(1, "printer", "s3cret"),
    p.Welcome(1, "slipstream", 1_764_000_000_000_000, 1 << 20),
    p.Publish("game.car_telemetry", [b"\x81\xa1a\x01", b""], None),
    p.Publish("live.TimingData", [b"x" * 300], 7),
    p.PublishAck(7, 101, 2),
    p.Subscribe(3, "live.>", "earliest", "sqlite", 1000),
    p.Subscribe(4, "game.*", 42, None, 1),
    p.Subscribed(3),
    p.Unsubscribe(3),
    p.Deliver(3, "live.TrackStatus", 5, [1, 2], [b"a", b"bc"]),
    p.Gap(3, "live.TrackStatus", 5, 120, "evicted"),
    p.Ack(3, 64),
    p.Ping(9),
    p.Pong(9),
    p.StatsRequest(11),
    p.StatsReply(11, {"topics": {"a": {"published": 1}}}),
    p.Error("auth", "token required", None, True),
    p.Error("unknown_sid", "no subscription with sid 5", 5, False),
]


@pytest.mark.parametrize("frame", EVERY_FRAME, ids=lambda f: type(f).__name__)
def test_every_frame_type_round_trips(frame: p.Frame) -> None:
    assert p.FrameDecoder().feed(p.encode(frame)) == [frame]


def test_frames_split_at_every_byte_come_out_whole_and_in_order() -> None:
    stream = b"".join(p.encode(frame) for frame in EVERY_FRAME)
    decoder = p.FrameDecoder()
    frames = [frame for byte in range(len(stream))
              for frame in decoder.feed(stream[byte:byte + 1])]
    assert frames == EVERY_FRAME
    assert decoder.buffered_bytes == 0


def test_wire_format_is_length_prefix_then_msgpack_array() -> None:
    wire = p.encode(p.Ping(5))
    body = msgpack.packb([p.FrameType.PING, 5])
    assert wire == struct.pack(">I", len(body)) + body


def test_shared_delivery_tail_encodes_the_same_as_a_plain_frame() -> None:
    frame = p.Deliver(12, "game.lap_data", 1000, [17, 18, 19], [b"a", b"b" * 300, b""])
    tail = p.encode_deliver_tail(frame.topic, frame.first_seq, frame.timestamps_us,
                                 frame.payloads)
    assert b"".join(p.encode_deliver(12, tail)) == p.encode(frame)
    assert p.FrameDecoder().feed(b"".join(p.encode_deliver(300_000, tail))) == [
        frame._replace(sid=300_000)]


def test_oversize_frame_is_refused_with_sizes_in_the_message() -> None:
    decoder = p.FrameDecoder(max_frame_bytes=1024 * 1024)
    frames = decoder.feed(p.encode(p.Ping(1)) + struct.pack(">I", 3 * 1024 * 1024) + b"x")
    assert frames == [p.Ping(1)]  # what came before the bad frame is still delivered
    assert decoder.error is not None
    assert decoder.error.code == "frame_too_large"
    assert "frame of 3,145,728 bytes" in str(decoder.error)
    assert "exceeds max-frame 1,048,576" in str(decoder.error)


def test_decoder_stays_broken_after_an_error() -> None:
    decoder = p.FrameDecoder()
    decoder.feed(struct.pack(">I", 0))
    assert decoder.error is not None and "empty frame" in str(decoder.error)
    with pytest.raises(ProtocolError, match="empty frame"):
        decoder.feed(p.encode(p.Ping(1)))


def test_http_request_gets_a_hint_about_the_protocol() -> None:
    decoder = p.FrameDecoder()
    decoder.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert decoder.error is not None
    assert "is the peer speaking the slipstream protocol?" in str(decoder.error)


def _framed(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


@pytest.mark.parametrize(("body", "expected"), [
    (b"\xc1", "not one msgpack value"),  # 0xc1 is never used in msgpack
    (msgpack.packb([11, 1]) + b"\x01", "not one msgpack value"),  # trailing bytes
    (msgpack.packb({"type": 11}), "must be an array starting with an integer type"),
    (msgpack.packb([]), "must be an array starting with an integer type"),
    (msgpack.packb(["PING", 1]), "must be an array starting with an integer type"),
    (msgpack.packb([11]), "Ping frame needs 1 fields (nonce), got 0"),
    (msgpack.packb([3, "t", ["not bytes"], None]), "field 'payloads' has a bad value"),
    (msgpack.packb([3, 5, [b"x"], None]), "field 'topic' has a bad value"),
    (msgpack.packb([8, 1, "t", 1, [1, 2], [b"x"]]), "different number of timestamps"),
])
def test_malformed_body_is_a_protocol_error_naming_the_problem(body: bytes, expected: str) -> None:
    decoder = p.FrameDecoder()
    assert decoder.feed(_framed(body)) == []
    assert decoder.error is not None
    assert expected in str(decoder.error)
    assert decoder.error.code == "bad_frame"


def test_unknown_frame_type_is_reported_not_fatal() -> None:
    decoder = p.FrameDecoder()
    frames = decoder.feed(_framed(msgpack.packb([99, "future"])) + p.encode(p.Ping(2)))
    assert frames == [p.UnknownFrame(99, ["future"]), p.Ping(2)]
    assert decoder.error is None


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2048), st.integers(min_value=1, max_value=64))
def test_random_bytes_never_raise_out_of_feed(data: bytes, chunk: int) -> None:
    decoder = p.FrameDecoder(max_frame_bytes=4096)
    for start in range(0, len(data), chunk):
        if decoder.error is not None:
            break
        for frame in decoder.feed(data[start:start + chunk]):
            assert isinstance(frame, (*p.Frame.__args__, p.UnknownFrame))
    assert decoder.error is None or isinstance(decoder.error, ProtocolError)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(EVERY_FRAME), min_size=1, max_size=8), st.data())
def test_truncated_stream_yields_exactly_the_complete_frames(
        frames: list[p.Frame], data: st.DataObject) -> None:
    stream = b"".join(p.encode(frame) for frame in frames)
    cut = data.draw(st.integers(min_value=0, max_value=len(stream)))
    decoder = p.FrameDecoder()
    decoded = decoder.feed(stream[:cut])
    complete = 0
    boundary = 0
    for frame in frames:
        boundary += len(p.encode(frame))
        if boundary <= cut:
            complete += 1
    assert decoded == frames[:complete]
    assert decoder.error is None
    assert decoder.feed(stream[cut:]) == frames[complete:]


def _doc_examples() -> list[tuple[str, bytes]]:
    """Every hex example in docs/protocol.md: (its label line, its bytes)."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    examples = []
    for label, hex_line in re.findall(r"^([A-Z_]+ .*)\n((?:[0-9a-f]{2} *)+)$", text, re.M):
        examples.append((label, bytes.fromhex(hex_line.replace(" ", ""))))
    return examples


def test_every_hex_example_in_the_protocol_doc_decodes_and_encodes_back() -> None:
    examples = _doc_examples()
    assert [label.split()[0] for label, _ in examples] == [
        "HELLO", "HELLO", "PUB", "MSG", "ACK", "PUBM", "MSGM"]
    for label, data in examples:
        decoder = p.FrameDecoder()
        frames = decoder.feed(data)
        if label.startswith(("PUBM", "MSGM")):
            assert decoder.error is None and len(frames) == 2, label
            assert _encode_runs(frames) == data, label
            continue
        assert decoder.error is None and len(frames) == 1, label
        assert type(frames[0]).__name__ != "UnknownFrame", label
        assert p.encode(frames[0]) == data, label  # type: ignore[arg-type]


def _encode_runs(frames: list[p.Frame | p.UnknownFrame]) -> bytes:
    """The one PUBM or MSGM that the frames it decoded into came from."""
    if all(type(frame) is p.Publish for frame in frames):
        return p.encode_publish_runs([(f.topic, f.payloads) for f in frames])  # type: ignore[union-attr]
    tails = [p.encode_deliver_tail(f.topic, f.first_seq, f.timestamps_us, f.payloads)  # type: ignore[union-attr]
             for f in frames]
    return b"".join(p.encode_deliver_runs(frames[0].sid, tails))  # type: ignore[union-attr]


def test_a_pubm_is_the_pubs_of_its_runs_and_a_msgm_the_msgs() -> None:
    runs = [("t.a", [b"1", b"2"]), ("t.b", [b"3"]), ("t.a", [b"4"])]
    decoder = p.FrameDecoder()
    assert decoder.feed(p.encode_publish_runs(runs)) == [
        p.Publish(topic, payloads, None) for topic, payloads in runs]
    tails = [p.encode_deliver_tail(f"t.{index}", index + 1, [7] * 2, [b"x", b"y"])
             for index in range(20)]  # more than 15: a longer array header
    frames = decoder.feed(b"".join(p.encode_deliver_runs(9, tails)))
    assert frames == [p.Deliver(9, f"t.{index}", index + 1, [7, 7], [b"x", b"y"])
                      for index in range(20)]


@pytest.mark.parametrize(("body", "expected"), [
    ([16, []], "non-empty array of runs"),
    ([16, [["t", [b"x"]], "run"]], "PUBM run 2 of 2 must be an array, got str 'run'"),
    ([16, [["t", ["not bin"]]]], "PUBM run 1 of 1: field 'payloads' has a bad value"),
    ([16, [["t"]]], "PUBM run 1 of 1 needs 2 fields (topic str, payloads array of bin), got 1"),
    ([17, 1, [["t", 1, [1, 2], [b"x"]]]],
     "MSGM run 1 of 1: it has a different number of timestamps and payloads"),
    ([17, [["t", 1, [1], [b"x"]]]], "MSGM frame needs 2 fields")])
def test_a_bad_run_is_a_protocol_error(body: list[object], expected: str) -> None:
    import msgpack

    data = msgpack.packb(body)
    decoder = p.FrameDecoder()
    decoder.feed(len(data).to_bytes(4, "big") + data)
    assert decoder.error is not None and expected in str(decoder.error)


def test_a_bad_body_after_good_frames_in_one_read_is_an_error_not_a_crash() -> None:
    """The error must not pin a view of the decoder's buffer (BufferError on resize)."""
    decoder = p.FrameDecoder()
    frames = decoder.feed(p.encode(p.Pong(1)) + b"\x00\x00\x00\x01\xc1")
    assert frames == [p.Pong(1)]
    assert decoder.error is not None and decoder.error.code == "bad_frame"
