"""The processes of an event, started in order and stopped in the reverse order.

Each child runs in a session of its own, so a Ctrl-C in the terminal reaches
only `slipstream event`, which then stops the children one by one: the
bridges first (no more laps come in), then the pages, the broker last (the
standings publish their last table on the way out, and the broker must
still be there to take it). Each child's output goes to its own log file;
a line it prints on stdout when it serves says it is ready. On Linux a child
also gets SIGTERM if `slipstream event` itself dies, so none is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
PR_SET_PDEATHSIG = 1


class ChildFailed(Exception):
    """A child that did not start, or stopped by itself: what it was and its last words."""


@dataclass
class Child:
    name: str  # as the organiser reads it: "the broker", "rig1's bridge"
    argv: list[str]
    env: dict[str, str]
    ready: str  # the start of the stdout line that says it serves
    log: Path
    said: str = ""  # that line
    process: asyncio.subprocess.Process | None = None
    _pump: asyncio.Task[None] | None = field(default=None, repr=False)

    def last_words(self, lines: int = 5) -> str:
        try:
            tail = self.log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\n".join("    " + line for line in tail)


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies (Linux's prctl)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Children:
    def __init__(self) -> None:
        self.started: list[Child] = []
        self.stopping = False

    async def start(self, child: Child) -> Child:
        """Start `child` and wait until it says it serves; ChildFailed if it exits first
        or says nothing within START_TIMEOUT_S."""
        child.log.parent.mkdir(parents=True, exist_ok=True)
        log = child.log.open("a", encoding="utf-8")
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} slipstream event starts "
                  f"{child.name}\n")
        log.flush()
        child.process = await asyncio.create_subprocess_exec(
            *child.argv, env=child.env, stdout=asyncio.subprocess.PIPE, stderr=log,
            stdin=asyncio.subprocess.DEVNULL, start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        self.started.append(child)
        ready = asyncio.get_running_loop().create_future()
        child._pump = asyncio.create_task(self._copy_stdout(child, log, ready))
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                await ready
        except TimeoutError:
            raise ChildFailed(f"{child.name} did not start within {START_TIMEOUT_S:.0f} s "
                              f"(its log, {child.log}):\n{child.last_words()}") from None
        if not child.said:
            code = await child.process.wait()
            raise ChildFailed(f"{child.name} did not start (exit {code}); its log, "
                              f"{child.log}, ends:\n{child.last_words()}")
        return child

    async def _copy_stdout(self, child: Child, log: IO[str],
                           ready: asyncio.Future[None]) -> None:
        assert child.process is not None and child.process.stdout is not None
        try:
            async for raw in child.process.stdout:
                line = raw.decode(errors="replace")
                log.write(line)
                log.flush()
                if not child.said and line.startswith(child.ready):
                    child.said = line.strip()
                    if not ready.done():
                        ready.set_result(None)
        finally:
            if not ready.done():
                ready.set_result(None)  # it ended before saying it serves
            log.close()

    async def watch(self) -> Child:
        """Wait until a child stops by itself; returns it."""
        waits = {asyncio.ensure_future(child.process.wait()): child
                 for child in self.started if child.process is not None}
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        return waits[next(iter(done))]

    async def stop(self, say: Callable[[str], None]) -> bool:
        """Stop every child, last started first (SIGINT, then SIGKILL after
        STOP_TIMEOUT_S); True if each stopped cleanly."""
        self.stopping = True
        clean = True
        for child in reversed(self.started):
            process = child.process
            if process is None:
                continue
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGINT)
                try:
                    await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
                except TimeoutError:
                    process.kill()
                    await process.wait()
                    say(f"  {child.name} did not stop within {STOP_TIMEOUT_S:.0f} s: killed")
                    clean = False
                    continue
            if child._pump is not None:
                await child._pump
            code = process.returncode
            clean = clean and code == 0
            say(f"  stopped {child.name}" + ("" if code == 0 else f" (exit {code}; its log: "
                                                                  f"{child.log})"))
        return clean
