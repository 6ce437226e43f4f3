"""F1 game UDP datagrams -> decoded packets, sans-I/O: bytes in, dicts out.

Dispatch is on the header's packet format (2024, 2025, 2026) and packet id;
a datagram of an unknown format or id, or of the wrong length for its type,
is not decoded: `decode` returns an `Undecodable` saying why, so the bridge
can count it, log it once per (format, id) and still forward it raw.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from f1vocab.game.layout import Layout, Spec, compile_layout, topic_name
from f1vocab.game.specs import SPECS

__all__ = ["EVENT_DETAILS_BY_CODE", "SPECS", "GameDecoder", "Packet", "Undecodable",
           "struct_name"]
# Which union member holds the details of each event code (the others have none).
EVENT_DETAILS_BY_CODE = {
    "FTLP": "FastestLap", "RTMT": "Retirement", "DRSD": "DRSDisabled",
    "TMPT": "TeamMateInPits", "RCWN": "RaceWinner", "PENA": "Penalty", "SPTP": "SpeedTrap",
    "STLG": "StartLights", "DTSV": "DriveThroughPenaltyServed",
    "SGSV": "StopGoPenaltyServed", "FLBK": "Flashback", "BUTN": "Buttons",
    "OVTK": "Overtake", "SCAR": "SafetyCar", "COLL": "Collision",
}
_FORMAT_AND_ID = struct.Struct("<H4xB")  # packet_format, then packet_id at byte 6


@dataclass(frozen=True)
class Packet:
    packet_format: int
    packet_id: int
    name: str  # topic suffix: game.<name>
    data: dict[str, Any]  # the packet's fields, "header" included


@dataclass(frozen=True)
class Undecodable:
    packet_format: int | None
    packet_id: int | None
    reason: str


@dataclass
class _Compiled:
    name: str
    layout: Layout
    struct: struct.Struct


class GameDecoder:
    """Decodes any datagram of the three newest formats; compiled once, reused."""

    def __init__(self) -> None:
        self._packets: dict[tuple[int, int], _Compiled] = {}
        self._details: dict[tuple[int, str], tuple[Layout, struct.Struct]] = {}
        for packet_format, spec in SPECS.items():
            for packet_id, packet_name in spec.packet_ids.items():
                layout = compile_layout(spec, struct_name(spec, packet_name))
                self._packets[packet_format, packet_id] = _Compiled(
                    topic_name(packet_name), layout, layout.compile())
            for member, fields in spec.event_details.items():
                detail = compile_layout(spec, member, fields)
                self._details[packet_format, member] = (detail, detail.compile())

    def kind_of(self, packet: Undecodable) -> str:
        """A name for what was wrong, from a small fixed set (never the peer's raw values)."""
        if packet.packet_format is None:
            return "too short"
        if packet.packet_format not in SPECS:
            return "unknown format"
        if (packet.packet_format, packet.packet_id) not in self._packets:
            return f"format {packet.packet_format}, unknown packet id"
        return f"format {packet.packet_format}, packet id {packet.packet_id}, wrong size"

    def size(self, packet_format: int, packet_id: int) -> int:
        return self._packets[packet_format, packet_id].struct.size

    def decode(self, datagram: bytes) -> Packet | Undecodable:
        if len(datagram) < _FORMAT_AND_ID.size:
            return Undecodable(None, None, f"datagram of {len(datagram)} bytes is shorter than "
                                           "a packet header")
        packet_format, packet_id = _FORMAT_AND_ID.unpack_from(datagram)
        if packet_format not in SPECS:
            return Undecodable(packet_format, packet_id, f"unknown packet format {packet_format}"
                                                         f" (known: 2024, 2025, 2026)")
        compiled = self._packets.get((packet_format, packet_id))
        if compiled is None:
            return Undecodable(packet_format, packet_id,
                               f"unknown packet id {packet_id} in format {packet_format}")
        if len(datagram) != compiled.struct.size:
            return Undecodable(packet_format, packet_id,
                               f"{compiled.name} (format {packet_format}, id {packet_id}) must be "
                               f"{compiled.struct.size} bytes, got {len(datagram)}")
        data, _ = compiled.layout.build(compiled.struct.unpack(datagram))
        if compiled.name == "event":
            self._event_details(packet_format, data)
        return Packet(packet_format, packet_id, compiled.name, data)

    def _event_details(self, packet_format: int, data: dict[str, Any]) -> None:
        """Replace the union's raw bytes by the fields its event code defines (or {})."""
        code = bytes(data["event_string_code"]).decode("ascii", "replace")
        data["event_string_code"] = code
        member = EVENT_DETAILS_BY_CODE.get(code)
        raw: bytes = data["event_details"]
        if member is None or (packet_format, member) not in self._details:
            data["event_details"] = {}
            return
        layout, details = self._details[packet_format, member]
        data["event_details"], _ = layout.build(details.unpack_from(raw))


class GameEncoder:
    """Packets -> datagrams, the inverse of GameDecoder (for the simulator and tests)."""

    def __init__(self, packet_format: int) -> None:
        self.spec = SPECS[packet_format]
        self.packet_format = packet_format
        self._layouts = {packet_id: compile_layout(self.spec, struct_name(self.spec, name))
                         for packet_id, name in self.spec.packet_ids.items()}
        self._structs = {packet_id: layout.compile() for packet_id, layout
                         in self._layouts.items()}
        self.ids = {topic_name(name): packet_id
                    for packet_id, name in self.spec.packet_ids.items()}
        self._details = {member: compile_layout(self.spec, member, fields)
                         for member, fields in self.spec.event_details.items()}

    def blank(self, name: str) -> dict[str, Any]:
        """A packet of zeros with its header's format and id set: fill it in, then encode."""
        packet_id = self.ids[name]
        data = self._layouts[packet_id].blank()
        data["header"].update(packet_format=self.packet_format, packet_id=packet_id,
                              game_year=self.packet_format % 100)
        return data

    def encode(self, name: str, data: dict[str, Any]) -> bytes:
        packet_id = self.ids[name]
        if name == "event":
            data = {**data, "event_string_code": list(data["event_string_code"].encode()),
                    "event_details": self.event_details(data["event_string_code"],
                                                        data["event_details"])}
        return self._structs[packet_id].pack(*self._layouts[packet_id].flatten(data, []))

    def event_details(self, code: str, details: dict[str, Any]) -> bytes:
        member = EVENT_DETAILS_BY_CODE.get(code)
        if member is None or member not in self._details:
            return b""
        layout = self._details[member]
        return layout.compile().pack(*layout.flatten({**layout.blank(), **details}, []))


def struct_name(spec: Spec, packet_name: str) -> str:
    """The specification's struct for a packet name: 'CarSetups' -> 'PacketCarSetupData'."""
    for candidate in (f"Packet{packet_name}Data", f"Packet{packet_name}",
                      f"Packet{packet_name.removesuffix('s')}Data"):
        if candidate in spec.structs:
            return candidate
    raise KeyError(f"format {spec.packet_format} has no struct for packet {packet_name}")
