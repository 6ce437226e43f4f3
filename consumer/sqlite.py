"""`python -m consumer sqlite`: every message into SQLite, plus typed tables people query.

Rows are collected in memory and written in one transaction every --batch
messages or --flush-ms, whichever comes first, on a dedicated thread: the
event loop never waits for the disk. Messages are acknowledged to the broker
only after their transaction committed, and the subscription is durable, so
a writer killed at any moment and restarted resumes with nothing lost; what
the broker sends again is ignored by the (epoch, topic, seq) key.
Schema and example queries: docs/sqlite.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from broker import cli
from broker.client import Message
from consumer.api import Consumer
from consumer.sqlite_schema import SCHEMA, LiveTables, Rows

app = Consumer("sqlite", description="Write every message of the topics matching PATTERN "
                                     "into a SQLite database (WAL, batched, durable).")
DEFAULT_PATTERNS = ["live.>", "game.>", "alerts.>"]


@app.arguments
def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("patterns", nargs="*", default=DEFAULT_PATTERNS, metavar="PATTERN",
                        help=f"topics to store (default: {' '.join(DEFAULT_PATTERNS)})")
    parser.add_argument("--db", type=Path, default=Path("data/slipstream.db"),
                        help="database file, created if missing (default %(default)s)")
    parser.add_argument("--batch", type=cli.positive_int, default=2000, metavar="N",
                        help="commit after N messages (default %(default)s)")
    parser.add_argument("--flush-ms", type=cli.positive_int, default=200, metavar="T",
                        help="commit at least every T milliseconds (default %(default)s)")
    parser.set_defaults(durable="sqlite")  # resume after a restart unless told otherwise


class Writer:
    """The database side: one connection, used only on its own thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._db: sqlite3.Connection | None = None
        self.rows_written = 0
        self.commits = 0

    async def open(self) -> None:
        await self._run(self._open)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")  # readers never block the writer, nor it them
        db.execute("PRAGMA synchronous=NORMAL")  # durable at each WAL checkpoint; fast commits
        db.executescript(SCHEMA)
        self._db = db

    async def write(self, rows: Rows) -> None:
        await self._run(self._write, rows)

    def _write(self, rows: Rows) -> None:
        assert self._db is not None
        self._db.execute("BEGIN")
        for statement, values in rows.items():
            self._db.executemany(statement, values)
        self._db.execute("COMMIT")
        self.rows_written += sum(len(values) for values in rows.values())
        self.commits += 1

    async def close(self) -> None:
        if self._db is not None:
            await self._run(self._db.close)
        self._thread.shutdown()

    async def _run(self, function: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, function, *args)


class Batcher:
    """Collects rows from the handlers and commits them, then acknowledges."""

    def __init__(self, writer: Writer, batch: int, flush_s: float) -> None:
        self.writer = writer
        self.batch = batch
        self.flush_s = flush_s
        self.tables = LiveTables()
        self.rows = Rows()
        self.messages = 0
        self._lock = asyncio.Lock()  # one transaction at a time, in order

    async def add(self, message: Message) -> None:
        self.tables.rows_for(message, self.rows)
        self.messages += 1
        if self.messages >= self.batch:
            await self.flush()

    async def flush(self) -> None:
        async with self._lock:
            if not self.messages:
                return
            rows, self.rows, self.messages = self.rows, Rows(), 0
            # What may be acknowledged once these rows are in: every message handed out
            # so far (the one being handled now is acknowledged with the next batch).
            client = app.client
            assert client is not None
            acks = [(handler.subscription, handler.subscription.unacknowledged)
                    for handler in app.handlers if handler.subscription is not None]
            generation = client.generation
            await self.writer.write(rows)
            for subscription, count in acks:
                if subscription is not None and count:
                    subscription.ack(count, generation)

    async def flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            await self.flush()


_state: dict[str, Any] = {}


@app.startup
async def _open() -> None:
    writer = Writer(app.args.db)
    await writer.open()
    batcher = Batcher(writer, app.args.batch, app.args.flush_ms / 1000)
    _state.update(writer=writer, batcher=batcher,
                  timer=asyncio.create_task(batcher.flush_periodically()))
    for pattern in app.args.patterns:
        app.add_handler(pattern, batcher.add, auto_ack=False)


@app.shutdown
async def _close() -> None:
    if "writer" not in _state:
        return
    _state["timer"].cancel()
    await _state["batcher"].flush()
    writer: Writer = _state["writer"]
    await writer.close()
    print(f"sqlite: {writer.rows_written:,} rows in {writer.commits:,} transactions written to "
          f"{writer.path}", flush=True)
    print(f"  try: sqlite3 {writer.path} \"SELECT topic, count(*) FROM messages GROUP BY topic\"",
          flush=True)

