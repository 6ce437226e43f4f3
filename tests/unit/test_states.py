"""One source for each transition table: the code's. The tables in the connection cores'
docstrings and in docs/protocol.md are checked against it (issue 23, item 2)."""

from __future__ import annotations

from types import ModuleType

import pytest

from broker.errors import ConnectionStateError
from broker.wire import broker_connection, client_connection
from broker.wire.states import State, advance, table_markdown, table_text
from tests.helpers import ROOT

CORES = {"client": client_connection, "broker": broker_connection}


@pytest.mark.parametrize("core", CORES.values(), ids=CORES)
def test_the_docstring_shows_the_code_s_table(core: ModuleType) -> None:
    assert core.__doc__ is not None and table_text(core.TRANSITIONS) in core.__doc__


@pytest.mark.parametrize("side", CORES)
def test_the_protocol_document_shows_the_code_s_table(side: str) -> None:
    document = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
    assert table_markdown(side, CORES[side].TRANSITIONS) in document


def test_a_move_the_table_does_not_list_is_refused_with_what_and_when() -> None:
    happening = client_connection.Happening.WELCOME
    with pytest.raises(ConnectionStateError,
                       match="'WELCOME received' cannot happen while the connection is open"):
        advance(client_connection.TRANSITIONS, State.OPEN, happening)


def test_the_session_docstring_lists_every_wait_and_nothing_else() -> None:
    """broker/server/session.py's table of what act() stops for: one row per Wait."""
    from broker.server import session

    assert session.__doc__ is not None
    table = session.__doc__.split("    wait ", 1)[1]
    rows = [line.split()[0] for line in table.splitlines()[1:]  # a row, not its wrapped text
            if line.startswith("    ") and not line.startswith("     ")]
    assert rows == [wait.name for wait in session.Wait]
