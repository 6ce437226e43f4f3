"""Where the game's packets are published: `game.<packet>` for one rig, `game.<rig>.<packet>`
when the bridge is told which rig it hears (`slipstream udp --rig NAME`).

Shared by the bridge (producer/game/bridge.py) and every consumer that reads game
packets, so both sides split a topic the same way. docs/game-udp.md, "Rigs".
"""

from __future__ import annotations

import re

from f1vocab.game.layout import topic_name
from f1vocab.game.specs import SPECS

RAW = "raw"  # the untouched datagram (`udp --raw`)
# A rig is one topic token; not a packet's name, so `game.X` is never ambiguous.
_RIG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
PACKETS = frozenset(topic_name(name) for spec in SPECS.values()
                    for name in spec.packet_ids.values()) | {RAW}


class RigNameError(ValueError):
    """A rig name that cannot be one topic token."""


def check_rig(name: str) -> str:
    if not _RIG.match(name):
        raise RigNameError(f"rig name {name!r}: 1 to 32 letters, digits, '_' or '-', starting "
                           "with a letter or digit (it becomes a topic token: game.NAME.lap_data)")
    if name in PACKETS:
        raise RigNameError(f"rig name {name!r} is a packet's name: game.{name} would mean "
                           "both; pick another")
    return name


def game_topic(packet: str, rig: str | None = None) -> str:
    return f"game.{rig}.{packet}" if rig else f"game.{packet}"


def split_game_topic(topic: str) -> tuple[str | None, str]:
    """(rig or None, packet) of a game topic: `game.lap_data` -> (None, "lap_data"),
    `game.rig1.lap_data` -> ("rig1", "lap_data"). ValueError for anything else."""
    parts = topic.split(".")
    if parts[0] != "game" or len(parts) not in (2, 3):
        raise ValueError(f"{topic!r} is not a game packet topic (game.PACKET or "
                         "game.RIG.PACKET)")
    return (parts[1], parts[2]) if len(parts) == 3 else (None, parts[1])


def game_packet_of(topic: str) -> tuple[str | None, str] | None:
    """(rig or None, packet) of a game packet topic, or None for any other topic: what a
    consumer reading `game.>` beside other topics asks of each message."""
    try:
        return split_game_topic(topic)
    except ValueError:
        return None


def packet_patterns(packet: str) -> tuple[str, str]:
    """What to subscribe to for one packet type from every rig: the one-rig topic and the
    rigs' (`game.lap_data`, `game.*.lap_data`)."""
    return game_topic(packet), f"game.*.{packet}"
