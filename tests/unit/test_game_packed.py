"""Game packets at the game's size (issue 25): the datagram itself on the wire and on disk,
and the same map as before for a consumer that reads `message.data`."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest

from broker.subscription import Message
from f1vocab.game.decoder import GameDecoder, Packet
from f1vocab.game.packed import GAME_DATAGRAM_EXT, pack_datagram
from f1vocab.game.specs import SPECS
from producer.game.capture import CaptureReport, read_capture
from producer.game.simulator import SessionSimulator

CAPTURE = Path(__file__).resolve().parents[2] / "samples" / "game" / "session-2026.cap"


def message_of(payload: bytes) -> Message:
    return Message("game.x", 1, 0, payload, None, 1)


@pytest.mark.parametrize("packet_format", sorted(SPECS))
def test_every_packet_type_costs_at_most_one_and_a_half_times_its_datagram(
        packet_format: int) -> None:
    decoder, seen = GameDecoder(), {}
    for _, datagrams in SessionSimulator(packet_format, cars=20, hz=5, duration_s=6).frames():
        for datagram in datagrams:
            packet = decoder.decode(datagram)
            assert isinstance(packet, Packet)
            payload = pack_datagram(datagram)
            seen[packet.name] = (len(datagram), len(payload), len(msgpack.packb(packet.data)))
    assert len(seen) >= 12  # every type the simulator sends, events included
    for name, (size, packed, as_map) in seen.items():
        assert packed <= 1.5 * size, (name, size, packed)
        assert packed <= size + 5 < as_map, (name, size, packed, as_map)


def test_the_real_capture_decodes_to_the_same_maps_as_before() -> None:
    decoder, count = GameDecoder(), 0
    for _, datagram in read_capture(CAPTURE, CaptureReport()):
        packet = decoder.decode(datagram)
        assert isinstance(packet, Packet)
        assert message_of(pack_datagram(datagram)).data == packet.data
        count += 1
    assert count == 2132


def test_another_extension_type_is_left_as_it_is() -> None:
    other = msgpack.ExtType(GAME_DATAGRAM_EXT + 1, b"\x01\x02")
    assert message_of(msgpack.packb(other)).data == other
