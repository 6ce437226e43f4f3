"""`python -m consumer sqlite`: every message into SQLite, plus typed tables people query.

Rows are collected in memory and written in one transaction every --batch
messages or --flush-ms, whichever comes first, on a dedicated thread: the
event loop never waits for the disk. Messages are acknowledged to the broker
only after their transaction committed, and the subscription is durable, so
a writer killed at any moment and restarted resumes with nothing lost; what
the broker sends again is ignored by the (epoch, topic, seq) key.

A transaction that fails (disk full, the database locked by another process)
is rolled back and the same rows are tried again with backoff for --retry-for
seconds; meanwhile nothing more is acknowledged, so the broker holds the
messages. If it still fails, the writer stops with exit 1 and the reason. A
database that cannot be written at all is refused at start, with exit 2.
Schema and example queries: docs/sqlite.md.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from broker import cli
from broker.client import Batch
from broker.errors import ConfigError, SlipstreamError
from broker.progress import Progress
from consumer.api import Consumer, Fatal
from consumer.sqlite_schema import SCHEMA_VERSION, LiveTables, Rows, SchemaError, prepare

log = logging.getLogger("slipstream.sqlite")
RETRY_FIRST_DELAY_S = 0.1
CATCH_UP_CHECK_S = 1.0  # how often a catching-up writer asks the broker what is pending
RETRY_MAX_DELAY_S = 2.0

app = Consumer("sqlite", description="Write every message of the topics matching PATTERN "
                                     "into a SQLite database (WAL, batched, durable).")
DEFAULT_PATTERNS = ["live.>", "game.>", "alerts.>"]


@app.arguments
def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("patterns", nargs="*", default=DEFAULT_PATTERNS, metavar="PATTERN",
                        type=cli.pattern_arg,
                        help=f"topics to store (default: {' '.join(DEFAULT_PATTERNS)})")
    parser.add_argument("--db", type=Path, default=Path("data/slipstream.db"),
                        help="database file, created if missing (default %(default)s)")
    parser.add_argument("--batch", type=cli.positive_int, default=2000, metavar="N",
                        help="commit after N messages (default %(default)s)")
    parser.add_argument("--flush-ms", type=cli.positive_int, default=200, metavar="T",
                        help="commit at least every T milliseconds (default %(default)s)")
    parser.add_argument("--retry-for", type=float, default=30.0, metavar="SECONDS",
                        help="keep retrying a failed transaction (disk full, database locked) "
                             "this long before stopping with exit 1 (default %(default)s)")
    parser.add_argument("--game-json", action="store_true",
                        help="store every game packet as JSON in `messages`, for json_extract "
                             "queries; by default the high-rate ones (motion, telemetry, ...) "
                             "go to `game_packets` compressed, about 15x smaller")
    parser.set_defaults(durable="sqlite")  # resume after a restart unless told otherwise


class WriteFailed(SlipstreamError):
    """A transaction kept failing for --retry-for seconds: the writer stops (exit 1)."""


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
        """Open, create the schema, and prove a write works: refuse a database we cannot
        write now, rather than after the first batch of messages was handed to us."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA busy_timeout=1000")  # a lock held briefly elsewhere is waited for
            db.execute("PRAGMA journal_mode=WAL")  # readers never block the writer, nor it them
            db.execute("PRAGMA synchronous=NORMAL")  # durable at each WAL checkpoint
            migrated = prepare(db)
            _prove_writable(db)
        except (OSError, sqlite3.Error, SchemaError) as exc:
            raise ConfigError(f"cannot write the database {self.path}: {exc}") from None
        if migrated:  # said whatever the log level: the file changed under its owner
            print(f"sqlite: {self.path} brought up to schema {SCHEMA_VERSION} (live laps are "
                  "kept per session, game rows per rig)", file=sys.stderr, flush=True)
        self._db = db

    async def write(self, rows: Rows) -> None:
        await self._run(self._write, rows)

    def _write(self, rows: Rows) -> None:
        """One transaction: all of `rows`, or (rolled back) none of them."""
        db = self._db
        assert db is not None
        try:
            db.execute("BEGIN")
            for statement, values in rows.items():
                db.executemany(statement, values)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")  # else the next BEGIN fails: "within a transaction"
            raise
        self.rows_written += sum(len(values) for values in rows.values())
        self.commits += 1

    async def close(self) -> None:
        if self._db is not None:
            await self._run(self._db.close)
        self._thread.shutdown()

    async def _run(self, function: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, function, *args)


def _prove_writable(db: sqlite3.Connection) -> None:
    """Take the write lock and let it go: raises if the database cannot be written. A lock
    another process holds now is not that (the writer waits such locks out)."""
    try:
        db.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            return
        raise
    db.execute("ROLLBACK")


class Batcher:
    """Collects rows from the handlers and commits them, then acknowledges."""

    def __init__(self, writer: Writer, batch: int, flush_s: float,
                 retry_for_s: float = 30.0, game_json: bool = False) -> None:
        self.writer = writer
        self.batch = batch
        self.flush_s = flush_s
        self.retry_for_s = retry_for_s
        self.failed_attempts = 0
        self.failed = False  # gave up: the shutdown does not try again
        self.tables = LiveTables(game_json)
        self.rows = Rows()
        self.messages = 0
        self.handled = 0  # messages taken, since the start
        self.catch_up: Progress | None = None  # --from earliest: through the backlog
        self._catch_up_started = 0.0
        self._lock = asyncio.Lock()  # one transaction at a time, in order

    async def add(self, batch: Batch) -> None:
        for message in batch:
            try:
                self.tables.rows_for(message, self.rows)
            except Exception as exc:  # one bad message costs that message, not the batch
                app.message_failed(message, exc)
        self.messages += len(batch)
        self.handled += len(batch)
        if self.catch_up is not None:
            self._caught_up(batch)
        if self.messages >= self.batch:
            try:
                await self.flush()
            except WriteFailed as exc:
                raise Fatal(str(exc)) from None

    def start_catch_up(self, backlog: int, started_monotonic: float) -> None:
        """Count from the start: what was handled while the backlog was measured is in."""
        self.catch_up = Progress("sqlite catch-up", backlog, "msg")
        self.catch_up.advance(self.handled)
        self._catch_up_started = started_monotonic

    def _caught_up(self, batch: Batch) -> None:
        """Count the backlog down, until it is through."""
        progress = self.catch_up
        assert progress is not None
        progress.advance(len(batch))
        if progress.done >= (progress.total or 0):
            self.end_catch_up()

    def end_catch_up(self) -> None:
        progress = self.catch_up
        if progress is not None:
            progress.close()
            self.catch_up = None
            elapsed = max(time.monotonic() - self._catch_up_started, 1e-3)
            print(f"sqlite: caught up: {progress.done:,} messages of the backlog in "
                  f"{elapsed:.1f} s ({progress.done / elapsed:,.0f} msg/s); now storing as "
                  "they arrive", file=sys.stderr, flush=True)

    async def flush(self) -> None:
        async with self._lock:
            if not self.messages:
                return
            rows, count, self.rows, self.messages = self.rows, self.messages, Rows(), 0
            # What may be acknowledged once these rows are in: every message handed out
            # so far (the batch being handled now is acknowledged with the next flush).
            client = app.client
            assert client is not None
            acks = [(handler.subscription, handler.subscription.unacknowledged)
                    for handler in app.handlers if handler.subscription is not None]
            generation = client.generation
            try:
                await self._write_with_retries(rows)
            except BaseException:
                self._put_back(rows, count)  # not written: not acknowledged, kept for a retry
                raise
            for subscription, count in acks:
                if subscription is not None and count:
                    subscription.ack(count, generation)

    async def _write_with_retries(self, rows: Rows) -> None:
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self.retry_for_s
        delay = RETRY_FIRST_DELAY_S
        while True:
            try:
                await self.writer.write(rows)
            except sqlite3.Error as exc:
                self.failed_attempts += 1
                if loop.time() + delay > give_up_at:
                    self.failed = True
                    raise WriteFailed(
                        f"cannot write to {self.writer.path} for {self.retry_for_s:g} s: {exc}; "
                        "the messages not written are not acknowledged, and the broker keeps "
                        "them for the next run") from None
                if self.failed_attempts == 1 or self.failed_attempts % 20 == 0:
                    log.warning("writing %s failed (%s); rolled back, retrying for up to "
                                "%g s", self.writer.path, exc, self.retry_for_s)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_DELAY_S)
                continue
            if self.failed_attempts:
                log.warning("writing %s works again after %d failed attempts",
                            self.writer.path, self.failed_attempts)
                self.failed_attempts = 0
            return

    def _put_back(self, rows: Rows, count: int) -> None:
        """Rows of a failed transaction go back in front of any added since."""
        for statement, values in self.rows.items():
            rows[statement].extend(values)
        self.rows = rows
        self.messages += count

    async def flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            try:
                await self.flush()
            except WriteFailed as exc:
                app.fail(str(exc))
                return


@app.lifespan
async def _writing() -> AsyncIterator[None]:
    """Open the database; flush batches on a timer (and report a catch-up) in the
    background; on the way out, still connected, commit the last batch and close."""
    writer = Writer(app.args.db)
    await writer.open()
    batcher = Batcher(writer, app.args.batch, app.args.flush_ms / 1000, app.args.retry_for,
                      game_json=app.args.game_json)
    app.background(batcher.flush_periodically(), "the SQLite flush timer")
    if app.args.start == "earliest":
        app.background(_measure_backlog(batcher), "the catch-up report")
    for pattern in app.args.patterns:
        app.add_handler(pattern, batcher.add, auto_ack=False, batches=True)
    try:
        yield
    finally:
        await _close(writer, batcher)


async def _measure_backlog(batcher: Batcher) -> None:
    try:
        await _report_catch_up(batcher)
    except (SlipstreamError, KeyError) as exc:  # only a report: say so and carry on
        log.info("no catch-up report: %s", exc)


async def _report_catch_up(batcher: Batcher) -> None:
    """--from earliest: what the broker retains of our topics is the backlog to report
    progress through (an upper bound: a durable may resume part-way)."""
    client = await app.subscribed()
    started = time.monotonic()
    backlog = 0
    for pattern in app.args.patterns:
        stats = await client.stats_all(topics=pattern, connections=False)
        backlog += sum(topic["retained"] for topic in stats["topics"].values())
    if not backlog:
        return
    print(f"sqlite: catching up on up to {backlog:,} retained messages", file=sys.stderr,
          flush=True)
    batcher.start_catch_up(backlog, started)
    # A durable that resumed part-way never counts up to all that is retained: it has
    # caught up once the broker has nothing pending or unacknowledged (so committed) for it.
    durables = {f"{app.args.durable}:{pattern}" for pattern in app.args.patterns}
    while batcher.catch_up is not None and app.args.durable:
        await asyncio.sleep(CATCH_UP_CHECK_S)
        connections = (await client.stats(topic_limit=0))["connections"]
        ours = [sub for connection in connections for sub in connection["subscriptions"]
                if sub["durable"] in durables]
        if ours and not any(sub["pending"] or sub["unacked"] for sub in ours):
            batcher.end_catch_up()


async def _close(writer: Writer, batcher: Batcher) -> None:
    if batcher.catch_up is not None:
        batcher.catch_up.close()
    try:
        if not batcher.failed:
            await batcher.flush()
    except WriteFailed as exc:
        app.fail(str(exc))
    finally:
        await writer.close()
    print(f"sqlite: {writer.rows_written:,} rows in {writer.commits:,} transactions written to "
          f"{writer.path}", flush=True)
    print(f"  try: sqlite3 {writer.path} \"SELECT topic, count(*) FROM messages GROUP BY topic\"",
          flush=True)

