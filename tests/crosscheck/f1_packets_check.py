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

from producer.game.decoder import EVENT_DETAILS_BY_CODE, GameDecoder, Packet
from producer.game.layout import topic_name
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


def compare(ours: Packet, theirs: dict[str, Any]) -> str | None:
    if ours.name != "event":
        return None if same(values(ours.data), values(theirs)) else "values differ"
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
            problem = compare(ours, resolve(datagram).to_dict())
            if problem:
                print(f"format {packet_format}, {ours.name}: {problem}")
                return 1
            checked += 1
    print(f"{checked} datagrams of format {packet_format} agree")
    return 0


if __name__ == "__main__":
    sys.exit(main())
