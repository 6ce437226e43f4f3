"""Ending a background task properly: cancel it, then wait for it.

A task that is cancelled and dropped may still be running its cleanup, and an
exception it raised before is "never retrieved". Every owner of a task ends it
with `stop_task`, so the task is over when the owner goes on.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("slipstream")


async def stop_task(task: asyncio.Task[Any] | None) -> None:
    """Cancel `task` and wait until it has ended; log an exception it ended with."""
    if task is None:
        return
    task.cancel()
    # asyncio.wait does not raise the task's exception or its CancelledError; if we
    # are cancelled while we wait, that CancelledError does reach us.
    await asyncio.wait({task})
    if not task.cancelled() and task.exception() is not None:
        log.error("task %s failed: %s", task.get_name(), task.exception(),
                  exc_info=task.exception())
