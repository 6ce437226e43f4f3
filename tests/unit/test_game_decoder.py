"""The game UDP decoder, field by field, for every packet type of formats 2024, 2025, 2026.

Each datagram is built here the slow, obvious way: walking the specification
tables and packing one field at a time, each with its own value, so a field
out of place, of the wrong width or the wrong sign cannot go unnoticed.
"""

from __future__ import annotations

import itertools
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from f1vocab.game.decoder import (
    EVENT_DETAILS_BY_CODE,
    SPECS,
    GameDecoder,
    Packet,
    Undecodable,
    struct_name,
)
from f1vocab.game.layout import PRIMITIVES, Field, Spec

# The sizes each specification states for its packets, by packet id.
STATED_SIZES = {
    2024: [1349, 753, 1285, 45, 1350, 1133, 1352, 1239, 1020, 1306, 953, 1460, 231, 237, 101],
    2025: [1349, 753, 1285, 45, 1284, 1133, 1352, 1239, 1042, 954, 1041, 1460, 231, 273, 101,
           1131],
    2026: [1325, 926, 1399, 45, 1470, 1233, 1448, 1445, 1134, 1062, 1133, 1460, 231, 273, 104,
           1231, 269],
}
DECODER = GameDecoder()


class Values:
    """A distinct, exactly representable value for each next field of a type."""

    def __init__(self) -> None:
        self._counter = itertools.count(1)

    def next(self, type_name: str) -> Any:
        n = next(self._counter)
        match type_name:
            case "float" | "double":
                return n * 0.25
            case "int8":
                return n % 256 - 128
            case "int16":
                return n % 65536 - 32768
            case "int32":
                return -n
            case "char":
                return f"name{n}"
            case _:
                bits = {"uint8": 8, "uint16": 16}.get(type_name, 32)
                return n % (1 << bits)


def build(spec: Spec, fields: list[Field], values: Values,
          fixed: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    """(wire bytes, expected decoded dict) for `fields`, one field at a time."""
    wire = b""
    expected: dict[str, Any] = {}
    for name, type_name, dims in fields:
        count = 1
        for size in dims:
            count *= size
        if type_name == "char":
            text = values.next("char")
            wire += struct.pack(f"<{count}s", text.encode())
            expected[name] = text
        elif type_name in PRIMITIVES:
            items = [fixed[name]] if name in fixed else [values.next(type_name)
                                                         for _ in range(count)]
            wire += b"".join(struct.pack("<" + PRIMITIVES[type_name], v) for v in items)
            if len(dims) == 2:
                expected[name] = [items[i * dims[1]:(i + 1) * dims[1]] for i in range(dims[0])]
            else:
                expected[name] = items if dims else items[0]
        elif type_name == "EventDataDetails":
            continue  # built by the event tests
        else:
            records = []
            for _ in range(count):
                part, record = build(spec, spec.structs[type_name], values, fixed)
                wire += part
                records.append(record)
            expected[name] = records if dims else records[0]
    return wire, expected


CASES = [(packet_format, packet_id) for packet_format, spec in SPECS.items()
         for packet_id in spec.packet_ids if spec.packet_ids[packet_id] != "Event"]


@pytest.mark.parametrize(("packet_format", "packet_id"), CASES,
                         ids=[f"{f}-{SPECS[f].packet_ids[i]}" for f, i in CASES])
def test_every_field_of_every_packet_decodes(packet_format: int, packet_id: int) -> None:
    spec = SPECS[packet_format]
    fields = spec.structs[struct_name(spec, spec.packet_ids[packet_id])]
    wire, expected = build(spec, fields, Values(),
                           {"packet_format": packet_format, "packet_id": packet_id})
    assert len(wire) == STATED_SIZES[packet_format][packet_id]
    packet = DECODER.decode(wire)
    assert isinstance(packet, Packet), packet
    assert packet.data == expected
    assert (packet.packet_format, packet.packet_id) == (packet_format, packet_id)


def test_per_car_arrays_stay_indexed_like_the_game() -> None:
    spec = SPECS[2026]
    fields = spec.structs["PacketCarTelemetryData"]
    wire, expected = build(spec, fields, Values(), {"packet_format": 2026, "packet_id": 6})
    packet = DECODER.decode(wire)
    assert isinstance(packet, Packet) and packet.name == "car_telemetry"
    cars = packet.data["car_telemetry_data"]
    assert len(cars) == spec.max_cars == 24
    assert cars[23] == expected["car_telemetry_data"][23]
    assert len(cars[0]["tyres_surface_temperature"]) == 4


EVENT_CASES = [(packet_format, code) for packet_format, spec in SPECS.items()
               for code in spec.event_codes]


@pytest.mark.parametrize(("packet_format", "code"), EVENT_CASES,
                         ids=[f"{f}-{c}" for f, c in EVENT_CASES])
def test_every_event_code_with_its_details(packet_format: int, code: str) -> None:
    spec = SPECS[packet_format]
    header, expected_header = build(spec, spec.structs["PacketHeader"], Values(),
                                    {"packet_format": packet_format, "packet_id": 3})
    member = EVENT_DETAILS_BY_CODE.get(code)
    details, expected_details = b"", dict[str, Any]()
    if member in spec.event_details:
        details, expected_details = build(spec, spec.event_details[member], Values(), {})
    wire = header + code.encode() + details
    wire += bytes(STATED_SIZES[packet_format][3] - len(wire))  # the rest of the union
    packet = DECODER.decode(wire)
    assert isinstance(packet, Packet) and packet.name == "event"
    assert packet.data == {"header": expected_header, "event_string_code": code,
                           "event_details": expected_details}


def test_the_game_s_penalty_event_reads_as_the_specification_says() -> None:
    header, _ = build(SPECS[2025], SPECS[2025].structs["PacketHeader"], Values(),
                      {"packet_format": 2025, "packet_id": 3})
    wire = header + b"PENA" + bytes([4, 7, 11, 2, 5, 12, 1]) + bytes(45 - 29 - 4 - 7)
    packet = DECODER.decode(wire)
    assert isinstance(packet, Packet)
    assert packet.data["event_details"] == {
        "penalty_type": 4, "infringement_type": 7, "vehicle_idx": 11, "other_vehicle_idx": 2,
        "time": 5, "lap_num": 12, "places_gained": 1}


def test_what_cannot_be_decoded_says_why() -> None:
    header = struct.pack("<HBBBBBQfIIBB", 2025, 25, 1, 0, 1, 6, 1, 0.0, 1, 1, 0, 255)
    assert DECODER.decode(header[:5]) == Undecodable(
        None, None, "datagram of 5 bytes is shorter than a packet header")
    old = struct.pack("<H", 2023) + header[2:]
    assert DECODER.decode(old) == Undecodable(
        2023, 6, "unknown packet format 2023 (known: 2024, 2025, 2026)")
    unknown = header[:6] + bytes([16]) + header[7:]
    assert DECODER.decode(unknown) == Undecodable(2025, 16, "unknown packet id 16 in format 2025")
    assert DECODER.decode(header + bytes(100)) == Undecodable(
        2025, 6, "car_telemetry (format 2025, id 6) must be 1352 bytes, got 129")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1600), st.sampled_from(sorted(SPECS)), st.integers(0, 20))
def test_random_datagrams_never_raise(data: bytes, packet_format: int, packet_id: int) -> None:
    datagram = struct.pack("<H4xB", packet_format, packet_id) + data
    for candidate in (data, datagram):
        assert isinstance(DECODER.decode(candidate), Packet | Undecodable)


def test_readable_names_for_event_codes_and_tyre_compounds() -> None:
    from f1vocab.game.names import ACTUAL_TYRE_COMPOUNDS, VISUAL_TYRE_COMPOUNDS, event_name

    assert [event_name(code) for code in ("FTLP", "PENA", "SCAR", "XXXX")] == [
        "fastestLap", "penalty", "safetyCar", "XXXX"]
    assert (ACTUAL_TYRE_COMPOUNDS[16], ACTUAL_TYRE_COMPOUNDS[22], ACTUAL_TYRE_COMPOUNDS[8]) == (
        "C5", "C6", "wet")
    assert VISUAL_TYRE_COMPOUNDS[17] == "medium"


def test_readable_names_for_tracks_session_types_and_penalties() -> None:
    from f1vocab.game.names import penalty_name, session_type_name, track_name

    assert [track_name(i) for i in (0, 7, 28, 41, -1, 42)] == [
        "Melbourne", "Silverstone", "Portimão", "Zandvoort (Reverse)", "track -1", "track 42"]
    assert [session_type_name(i) for i in (1, 10, 15, 18, 99)] == [
        "Practice 1", "Sprint Shootout 1", "Race", "Time Trial", "session type 99"]
    assert [penalty_name(i) for i in (0, 4, 17, 18)] == [
        "Drive through", "Time penalty", "Black flag timer", "penalty type 18"]


def test_no_struct_of_any_format_names_a_field_twice() -> None:
    for packet_format, spec in SPECS.items():
        for name, fields in spec.structs.items():
            names = [field[0] for field in fields]
            assert len(names) == len(set(names)), (packet_format, name)


def test_the_layout_compiler_refuses_a_repeated_field_name() -> None:
    from f1vocab.game.layout import compile_layout
    spec = SPECS[2024]
    fields: list[Field] = [("a", "uint8", ()), ("b", "uint8", ()), ("a", "uint16", ())]
    with pytest.raises(ValueError, match="struct Twice names 'a' more than once"):
        compile_layout(spec, "Twice", fields)


def test_f1_24_lap_history_keeps_sector_two_minutes() -> None:
    from f1vocab.game.layout import compile_layout
    layout = compile_layout(SPECS[2024], "LapHistoryData")
    raw = layout.compile().pack(95_000, 61_000, 1, 62_500, 2, 31_000, 0, 15)
    data, _ = layout.build(layout.compile().unpack(raw))
    assert (data["sector1_time_minutes"], data["sector2_time_minutes"]) == (1, 2)
