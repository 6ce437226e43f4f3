"""Readable names for the enums the specification texts define (values stay integers).

Event codes and tyre compounds are given in the specification texts
themselves. (Track, session-type and penalty-type names live in EA's
separate appendix, which is not part of those texts.)
"""

from __future__ import annotations

from producer.game.decoder import SPECS

EVENT_NAMES = {code: name for spec in SPECS.values() for code, name in spec.event_codes.items()}

# m_actualTyreCompound: "F1 Modern - 16 = C5, 17 = C4, 18 = C3, 19 = C2, 20 = C1, 21 = C0,
# 22 = C6, 7 = inter, 8 = wet" (C0 and C6 from format 2025 on).
ACTUAL_TYRE_COMPOUNDS = {16: "C5", 17: "C4", 18: "C3", 19: "C2", 20: "C1", 21: "C0", 22: "C6",
                         7: "inter", 8: "wet"}
# m_visualTyreCompound: "F1 visual (can be different from actual compound) 16 = soft,
# 17 = medium, 18 = hard, 7 = inter, 8 = wet".
VISUAL_TYRE_COMPOUNDS = {16: "soft", 17: "medium", 18: "hard", 7: "inter", 8: "wet"}


def event_name(code: str) -> str:
    """'FTLP' -> 'fastestLap' (the specification's own name for it)."""
    return EVENT_NAMES.get(code, code)
