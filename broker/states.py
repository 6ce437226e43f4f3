"""The four states of a slipstream connection, and the one way to move between them.

Both sans-I/O cores (broker/client_connection.py, broker/broker_connection.py)
open with a table of (state, what happened) -> next state; `advance` is the only
code that changes a state, so a move the table does not list is an error
rather than a silent surprise (h11's `_state.py` works this way).
"""

from __future__ import annotations

from enum import Enum

from broker.errors import ConnectionStateError


class State(Enum):
    HANDSHAKE = "handshake"  # HELLO sent (client) or awaited (broker); no WELCOME yet
    OPEN = "open"  # frames flow both ways
    CLOSING = "closing"  # one side has said it is done; what is queued still goes out
    CLOSED = "closed"  # the byte stream is over; nothing more is sent or read


Transitions = dict[tuple[State, str], State]


def advance(table: Transitions, state: State, happened: str) -> State:
    """The state after `happened` in `state`, as `table` says; an unlisted move raises."""
    try:
        return table[state, happened]
    except KeyError:
        raise ConnectionStateError(
            f"{happened!r} cannot happen while the connection is {state.value}") from None


def every_state(happened: str, then: State) -> Transitions:
    """Rows for something that may happen in any state (the stream ending, say)."""
    return {(state, happened): then for state in State}
