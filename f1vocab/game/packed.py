"""A game packet on the wire and on disk: the game's own datagram, in one msgpack extension.

Decoded into a map of every field name for every car, a packet costs 5 to 17 times
the datagram the game sent (game.lap_data about 18.6 KB against 1.3 KB), and a
rig-hour of telemetry gigabytes, almost all of it field names. So the bridge
publishes the datagram itself, as msgpack extension type 71 ('G'): a header of
2 to 5 bytes, then the bytes as the game sent them. The client library turns it
into the same map as before when a consumer reads `message.data`, and only then
(broker/subscription.py). docs/messages.md says how another language decodes it.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import msgpack

from f1vocab.game.decoder import GameDecoder, Packet

GAME_DATAGRAM_EXT = 71  # msgpack extension type code: a game datagram, undecoded


def pack_datagram(datagram: bytes) -> bytes:
    """The payload for one decodable datagram: msgpack ext 71 around its bytes."""
    return msgpack.packb(msgpack.ExtType(GAME_DATAGRAM_EXT, datagram))


@cache
def _decoder() -> GameDecoder:
    return GameDecoder()


def unpack_datagram(datagram: bytes) -> dict[str, Any]:
    """The packet's map, as the bridge used to publish it (header included)."""
    packet = _decoder().decode(datagram)
    if not isinstance(packet, Packet):  # the bridge sends only what decodes: a bug, loudly
        raise ValueError(f"a game datagram that does not decode: {packet.reason}")
    return packet.data
