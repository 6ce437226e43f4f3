"""Progress on long work: a bar in a terminal (tqdm), a line now and then otherwise.

Replays, archive downloads and a consumer catching up use it, so a user sees
that something is happening and how far along it is, whether they watch a
terminal or read a log file. The lines go to stderr beside the command's own
reports (not through logging, which consumers keep at WARNING).
"""

from __future__ import annotations

import os
import sys
import time
from types import TracebackType

from tqdm import tqdm

LOG_INTERVAL_S = 10.0  # without a terminal: one line this often
# SLIPSTREAM_PROGRESS=0: neither bar nor lines (make run, where several processes share
# one terminal and a bar would be torn up by the others' lines).
PROGRESS_ENV = "SLIPSTREAM_PROGRESS"


class Progress:
    """`with Progress("replay", total, "msg") as progress: progress.advance(n)`."""

    def __init__(self, what: str, total: int | None, unit: str, *,
                 terminal: bool | None = None, log_interval_s: float = LOG_INTERVAL_S) -> None:
        self.what, self.total, self.unit = what, total, unit
        self.done = 0
        self.note = ""
        self._interval_s = log_interval_s
        self._next_log = time.monotonic() + log_interval_s
        self._silent = os.environ.get(PROGRESS_ENV, "1") == "0"
        on_terminal = sys.stderr.isatty() if terminal is None else terminal
        self._bar = tqdm(total=total, unit=unit, desc=what, file=sys.stderr, leave=False,
                         dynamic_ncols=True, unit_scale=True) if (
            on_terminal and not self._silent) else None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def advance(self, count: int = 1, note: str | None = None) -> None:
        """`count` more done; `note` (session time, a file name) shown beside the count."""
        self.done += count
        if note is not None:
            self.note = note
        if self._bar is not None:
            self._bar.update(count)
            if note is not None:
                self._bar.set_postfix_str(note, refresh=False)
        elif not self._silent and time.monotonic() >= self._next_log:
            self._next_log = time.monotonic() + self._interval_s
            print(self.line(), file=sys.stderr, flush=True)

    def line(self) -> str:
        """'replay: 1,200 of 17,979 msg (6%), session time 00:15:02'."""
        of = ""
        if self.total:
            of = f" of {self.total:,} {self.unit} ({100 * self.done // self.total}%)"
        else:
            of = f" {self.unit}"
        return f"{self.what}: {self.done:,}{of}" + (f", {self.note}" if self.note else "")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
