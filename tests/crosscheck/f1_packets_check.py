"""Run with an `f1-packets` release on PYTHONPATH: do its decoding and ours agree?

    PYTHONPATH=<f1-packets dir>:<repo> python tests/crosscheck/f1_packets_check.py 2026

Decodes every datagram of a simulated session with both and compares every
value, in order. Prints "N datagrams of format F agree" and exits 0, or
prints the first disagreement and exits 1. (A separate process, because
every release of f1-packets is the module `f1`.)
"""

from __future__ import annotations

import sys
from typing import Any

from f1.packets import resolve  # type: ignore[import-not-found]  # independent, from PyPI

from f1vocab.game.decoder import EVENT_DETAILS_BY_CODE, GameDecoder, Packet
from f1vocab.game.layout import topic_name
from producer.game.simulator import SessionSimulator


def values(data: Any) -> list[Any]:
    """Every leaf value, depth first, lists flattened (their 2-D arrays are flat)."""
    if isinstance(data, dict):
        return [leaf for item in data.values() for leaf in values(item)]
    if isinstance(data, list | tuple):
        return [leaf for item in data for leaf in values(item)]
    return [data]


def same(ours: list[Any], theirs: list[Any]) -> bool:
    """Equal, floats to within f1-packets' presentation (its to_dict rounds to 3 places)."""
    return len(ours) == len(theirs) and all(
        abs(a - b) <= 0.0005 + 1e-9 * abs(a) if isinstance(a, float) else a == b
        for a, b in zip(ours, theirs, strict=True))


def wire_values(decoder: GameDecoder, datagram: bytes) -> int:
    """How many values the datagram's packet has on the wire, by position."""
    packet_format, packet_id = int.from_bytes(datagram[:2], "little"), datagram[6]
    return len(decoder._packets[packet_format, packet_id].struct.unpack(datagram))


def in_their_names(packet_format: int, ours: Packet) -> Any:
    """Our data as f1-packets names it. Its 2024.1.0 release keeps EA's F1 24 typo, two
    fields named sector1_time_minutes in LapHistoryData, so its dict holds only the second
    (sector 2's minutes) under that name. We decode both; compare what it can show."""
    if packet_format != 2024 or ours.name != "session_history":
        return ours.data
    laps = [{key: value for key, value in lap.items() if key != "sector2_time_minutes"}
            | {"sector1_time_minutes": lap["sector2_time_minutes"]}
            for lap in ours.data["lap_history_data"]]
    return {**ours.data, "lap_history_data": laps}


def compare(ours: Packet, theirs: dict[str, Any], wire_count: int,
            packet_format: int) -> str | None:
    # By position first: every value on the wire must reach a field of ours. Comparing by
    # name alone let two fields with one name (F1 24's sector minutes) hide: the second
    # overwrote the first on both sides, and the simulator's values were equal anyway.
    if ours.name != "event" and len(values(ours.data)) != wire_count:
        return f"{len(values(ours.data))} values decoded of {wire_count} on the wire"
    if ours.name != "event":
        mine = in_their_names(packet_format, ours)
        return None if same(values(mine), values(theirs)) else "values differ"
    if not same(values(ours.data["header"]), values(theirs["header"])):
        return "event header differs"
    if bytes(theirs["event_string_code"]).decode() != ours.data["event_string_code"]:
        return "event code differs"
    member = EVENT_DETAILS_BY_CODE.get(ours.data["event_string_code"])
    if member is not None and ours.data["event_details"] and not same(
            values(ours.data["event_details"]),
            values(theirs["event_details"][topic_name(member)])):
        return f"event details ({member}) differ"
    return None


def main() -> int:
    packet_format = int(sys.argv[1])
    decoder = GameDecoder()
    checked = 0
    for _, datagrams in SessionSimulator(packet_format, cars=20, hz=5, duration_s=120).frames():
        for datagram in datagrams:
            ours = decoder.decode(datagram)
            assert isinstance(ours, Packet), ours
            problem = compare(ours, resolve(datagram).to_dict(), wire_values(decoder, datagram),
                              packet_format)
            if problem:
                print(f"format {packet_format}, {ours.name}: {problem}")
                return 1
            checked += 1
    print(f"{checked} datagrams of format {packet_format} agree")
    return 0


if __name__ == "__main__":
    sys.exit(main())
