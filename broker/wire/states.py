"""The four states of a slipstream connection, and the one way to move between them.

Both sans-I/O cores (broker/wire/client_connection.py, broker/wire/broker_connection.py)
open with a table of (state, what happened) -> next state; `advance` is the only
code that changes a state, so a move the table does not list is an error
rather than a silent surprise (h11's `_state.py` works this way). What happens
is each core's own Enum, so a misspelt move fails at import and in mypy; the
tables in the cores' docstrings and in docs/protocol.md are `table_text` of
the code's tables, and tests/unit/test_states.py keeps them so.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import TypeVar

from broker.errors import ConnectionStateError


class State(Enum):
    HANDSHAKE = "handshake"  # HELLO sent (client) or awaited (broker); no WELCOME yet
    OPEN = "open"  # frames flow both ways
    CLOSING = "closing"  # one side has said it is done; what is queued still goes out
    CLOSED = "closed"  # the byte stream is over; nothing more is sent or read


H = TypeVar("H", bound=Enum)
Transitions = Mapping[tuple[State, H], State]


def advance(table: Transitions[H], state: State, happened: H) -> State:
    """The state after `happened` in `state`, as `table` says; an unlisted move raises."""
    try:
        return table[state, happened]
    except KeyError:
        raise ConnectionStateError(
            f"{happened.value!r} cannot happen while the connection is {state.value}") from None


def every_state(happened: H, then: State) -> dict[tuple[State, H], State]:
    """Rows for something that may happen in any state (the stream ending, say)."""
    return {(state, happened): then for state in State}


def rows(table: Transitions[H]) -> list[tuple[str, str, str]]:
    """(state, what happened, next) in the table's order; what may happen in every state
    with one outcome is one row, its state `any`."""
    out: list[tuple[str, str, str]] = []
    seen: set[H] = set()
    for (state, happened), then in table.items():
        everywhere = all(table.get((s, happened)) is then for s in State)
        if everywhere and happened in seen:
            continue
        seen.add(happened)
        out.append(("any" if everywhere else state.name, str(happened.value), then.name))
    return out


def table_text(table: Transitions[H]) -> str:
    """The table as the cores' docstrings show it."""
    found = rows(table)
    width = max(len("what happened"), *(len(happened) for _, happened, _ in found)) + 2
    lines = [f"{'state':<11}{'what happened':<{width}}next"]
    lines += [f"{state:<11}{happened:<{width}}{then}" for state, happened, then in found]
    return "\n".join("    " + line for line in lines)


def table_markdown(side: str, table: Transitions[H]) -> str:
    """The table's rows as docs/protocol.md shows them, `side` in the first column."""
    return "\n".join(f"| {side} | {state} | {happened} | {then} |"
                     for state, happened, then in rows(table))
