"""The SQLite writer when the database cannot take rows: a full disk (a real tmpfs), a lock
held by another process, a read-only database. Nothing is acknowledged that was not
committed, so every message is in the database exactly once in the end."""

from __future__ import annotations

import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker import Client
from tests.helpers import (
    Processes,
    RunningBroker,
    RunningProcess,
    remount,
    run_command,
    small_tmpfs,
    wait_for,
    wait_subscribed,
)

MESSAGES = 500
PAYLOAD = {"pad": "x" * 4000}  # 500 x 4 KB: more than the 1 MiB disk below holds


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "disk", "1m") as mount_point:
        yield mount_point




def stored(db: Path) -> list[int]:
    with sqlite3.connect(db) as connection:
        return [seq for (seq,) in connection.execute(
            "SELECT seq FROM messages WHERE topic = 'fill.t' ORDER BY seq")]


async def publish_all(address: str) -> None:
    async with Client(address, name="filler") as client:
        for _ in range(MESSAGES):
            await client.publish("fill.t", PAYLOAD)
        await client.publish("fill.t", PAYLOAD, confirm=True)


async def start_writer(processes: Processes, db: Path, address: str,
                       *flags: str) -> RunningProcess:
    return await processes.command("-m", "consumer", "sqlite", "fill.>", "--db", str(db),
                                   "--batch", "50", "--broker", address, *flags)


async def writing_while_full(processes: Processes, db: Path, *flags: str
                             ) -> tuple[RunningBroker, RunningProcess]:
    """A broker and a writer on `db`, and every message published meanwhile."""
    broker = await processes.broker()
    writer = await start_writer(processes, db, broker.address, *flags)
    await wait_subscribed(broker.address, "sqlite")  # the database exists before that
    await publish_all(broker.address)
    return broker, writer


async def rows_are(db: Path, count: int) -> bool:
    try:
        return len(stored(db)) == count
    except sqlite3.Error:
        return False


async def test_full_disk_is_retried_and_no_row_is_lost_when_space_returns(
        processes: Processes, small_disk: Path) -> None:
    db = small_disk / "full.db"
    _, writer = await writing_while_full(processes, db, "--retry-for", "120")
    await wait_for(lambda: _logged(writer, "failed (database or disk is full)"),
                   "the writer to hit the full disk")
    remount(small_disk, "size=64m")
    await wait_for(lambda: rows_are(db, MESSAGES + 1), "every row once space returned", 60)
    assert await writer.stop(signal.SIGINT) == 0
    assert stored(db) == list(range(1, MESSAGES + 2))  # each exactly once, none missing
    assert "works again after" in writer.log()


async def test_disk_full_for_too_long_exits_1_and_a_restart_loses_nothing(
        processes: Processes, small_disk: Path) -> None:
    db = small_disk / "full.db"
    broker, writer = await writing_while_full(processes, db, "--retry-for", "1")
    await wait_for(lambda: _exited(writer), "the writer to give up", 30)
    assert writer.process.returncode == 1
    reason = [line for line in writer.log().splitlines() if line.startswith("sqlite: error:")]
    assert len(reason) == 1 and "database or disk is full" in reason[0], writer.log()
    remount(small_disk, "size=64m")
    again = await start_writer(processes, db, broker.address)
    await wait_for(lambda: rows_are(db, MESSAGES + 1), "every row after the restart", 60)
    assert await again.stop(signal.SIGINT) == 0
    assert stored(db) == list(range(1, MESSAGES + 2))


async def test_database_locked_by_another_process_is_waited_out(
        processes: Processes, tmp_path: Path) -> None:
    broker = await processes.broker()
    db = tmp_path / "locked.db"
    writer = await start_writer(processes, db, broker.address, "--retry-for", "120")
    await wait_subscribed(broker.address, "sqlite")
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process's long transaction
    await publish_all(broker.address)
    await wait_for(lambda: _logged(writer, "database is locked"), "the writer to meet the lock")
    holder.execute("ROLLBACK")
    holder.close()
    await wait_for(lambda: rows_are(db, MESSAGES + 1), "every row once the lock went", 60)
    assert await writer.stop(signal.SIGINT) == 0
    assert stored(db) == list(range(1, MESSAGES + 2))
    assert "within a transaction" not in writer.log()


async def test_read_only_database_is_refused_at_start_with_exit_2(
        processes: Processes, small_disk: Path) -> None:
    db = small_disk / "ro.db"
    sqlite3.connect(db).close()
    remount(small_disk, "ro")
    code, _, err = await run_command("-m", "consumer", "sqlite", "--db", str(db),
                                     "--broker", "127.0.0.1:9")  # never reached
    assert code == 2, err
    assert err.strip().splitlines()[-1] != ""
    assert "sqlite: error: cannot write the database" in err and "readonly" in err


async def _exists(path: Path) -> bool:
    return path.exists()


async def _logged(process: RunningProcess, text: str) -> bool:
    return text in process.log()


async def _exited(process: RunningProcess) -> bool:
    return process.process.returncode is not None
