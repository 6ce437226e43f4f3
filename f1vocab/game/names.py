"""Readable names for the common enums (decoded values stay integers).

Event codes and tyre compounds are given in the specification texts
themselves. Tracks, session types and penalty types are listed in the
appendices of EA's documents "Data Output from F1 24 Game" and "Data Output
from F1 25 Game"; the F1 25 document also serves packet format 2026, which
the F1 25 game sends with its 2026 season pack and for which EA published
no appendix of its own. A lookup of an id no appendix lists returns a
plain placeholder rather than a guess.
"""

from __future__ import annotations

from f1vocab.game.specs import SPECS

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


# Track ids never change meaning between games; a game drops the circuits it
# no longer has (F1 25 dropped 1, 8, 18, 21-25 and 28) and adds new ids.
TRACKS = {
    0: "Melbourne", 1: "Paul Ricard", 2: "Shanghai", 3: "Sakhir (Bahrain)", 4: "Catalunya",
    5: "Monaco", 6: "Montreal", 7: "Silverstone", 8: "Hockenheim", 9: "Hungaroring",
    10: "Spa", 11: "Monza", 12: "Singapore", 13: "Suzuka", 14: "Abu Dhabi", 15: "Texas",
    16: "Brazil", 17: "Austria", 18: "Sochi", 19: "Mexico", 20: "Baku (Azerbaijan)",
    21: "Sakhir Short", 22: "Silverstone Short", 23: "Texas Short", 24: "Suzuka Short",
    25: "Hanoi", 26: "Zandvoort", 27: "Imola", 28: "Portimão", 29: "Jeddah", 30: "Miami",
    31: "Las Vegas", 32: "Losail", 39: "Silverstone (Reverse)", 40: "Austria (Reverse)",
    41: "Zandvoort (Reverse)",
}

# The same list in both appendices.
SESSION_TYPES = {
    0: "Unknown", 1: "Practice 1", 2: "Practice 2", 3: "Practice 3", 4: "Short Practice",
    5: "Qualifying 1", 6: "Qualifying 2", 7: "Qualifying 3", 8: "Short Qualifying",
    9: "One-Shot Qualifying", 10: "Sprint Shootout 1", 11: "Sprint Shootout 2",
    12: "Sprint Shootout 3", 13: "Short Sprint Shootout", 14: "One-Shot Sprint Shootout",
    15: "Race", 16: "Race 2", 17: "Race 3", 18: "Time Trial",
}

# The same list in both appendices; the event "PENA" carries it as penalty_type.
PENALTY_TYPES = {
    0: "Drive through", 1: "Stop Go", 2: "Grid penalty", 3: "Penalty reminder",
    4: "Time penalty", 5: "Warning", 6: "Disqualified", 7: "Removed from formation lap",
    8: "Parked too long timer", 9: "Tyre regulations", 10: "This lap invalidated",
    11: "This and next lap invalidated", 12: "This lap invalidated without reason",
    13: "This and next lap invalidated without reason", 14: "This and previous lap invalidated",
    15: "This and previous lap invalidated without reason", 16: "Retired",
    17: "Black flag timer",
}


def track_name(track_id: int) -> str:
    """7 -> 'Silverstone'; -1 (the game's 'unknown') or an unlisted id -> 'track <id>'."""
    return TRACKS.get(track_id, f"track {track_id}")


def session_type_name(session_type: int) -> str:
    """15 -> 'Race'."""
    return SESSION_TYPES.get(session_type, f"session type {session_type}")


def penalty_name(penalty_type: int) -> str:
    """4 -> 'Time penalty'."""
    return PENALTY_TYPES.get(penalty_type, f"penalty type {penalty_type}")


# Wheel arrays in the game's telemetry are in this order (both appendices).
WHEELS = ("rear-left", "rear-right", "front-left", "front-right")

# The event "SCAR": safety_car_type and event_type.
SAFETY_CAR_TYPES = {0: "No safety car", 1: "Safety car", 2: "Virtual safety car",
                    3: "Formation lap safety car"}
SAFETY_CAR_EVENTS = {0: "deploying", 1: "returning", 2: "returned", 3: "resuming the race"}


def wheel_name(index: int) -> str:
    """2 -> 'front-left'."""
    return WHEELS[index] if 0 <= index < len(WHEELS) else f"wheel {index}"


def safety_car_name(safety_car_type: int) -> str:
    return SAFETY_CAR_TYPES.get(safety_car_type, f"Safety car type {safety_car_type}")


def safety_car_event_name(event_type: int) -> str:
    return SAFETY_CAR_EVENTS.get(event_type, f"event {event_type}")
