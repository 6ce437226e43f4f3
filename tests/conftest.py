from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.helpers import Processes


@pytest.fixture
async def processes(tmp_path: Path) -> AsyncIterator[Processes]:
    """Start real slipstream processes; every one is killed at the end of the test."""
    started = Processes(tmp_path)
    try:
        yield started
    finally:
        await started.cleanup()


@pytest.fixture(params=["embedded", "nats"])
def engine(request: pytest.FixtureRequest, processes: Processes) -> str:
    """Run a test on both engines: `processes.any_broker()` starts the one chosen."""
    processes.engine = request.param
    return str(request.param)
