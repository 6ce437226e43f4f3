"""The broker's data directory (--data-dir): the lock, the epoch, durable positions, topics.

    DIR/LOCK            held (flock) by the one broker using DIR; says its pid
    DIR/EPOCH           the epoch, chosen when DIR was created and kept after
    DIR/durables.bin    durable positions (msgpack), replaced atomically when they move
    DIR/topics/NAME/    one topic's segments (broker/segments.py)

See docs/storage.md. File work only; the broker decides when to call it.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import Any, Literal

import msgpack

from broker.errors import StorageError
from broker.segments import RecoveryReport, TopicStore

FsyncPolicy = Literal["always", "interval", "never"]
DATA_DIR_ENV = "SLIPSTREAM_DATA_DIR"


class DataDir:
    def __init__(self, path: Path, fsync: FsyncPolicy = "interval") -> None:
        self.path = path
        self.fsync = fsync
        self.topics_path = path / "topics"
        self.epoch = 0
        self._lock_fd: int | None = None

    def open(self) -> None:
        """Create or open DIR, take its lock and read (or choose) the epoch."""
        try:
            self.topics_path.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.path / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageError(f"cannot use data directory {self.path}: "
                               f"{exc.strerror or exc}") from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._lock_fd, 32, 0).decode(errors="replace").strip()
            os.close(self._lock_fd)
            self._lock_fd = None
            raise StorageError(f"data directory {self.path} is in use by another broker "
                               f"(pid {holder or '?'}); one broker per directory") from None
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, f"{os.getpid()}\n".encode(), 0)
        epoch_file = self.path / "EPOCH"
        if epoch_file.exists():
            try:
                self.epoch = int(epoch_file.read_text().strip())
            except ValueError:
                raise StorageError(f"{epoch_file} does not hold an epoch (a number)") from None
        else:
            self.epoch = time.time_ns() // 1000
            self._write_atomically(epoch_file, f"{self.epoch}\n".encode())

    def close(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def open_topics(self, repair: bool,
                    segment_bytes: int) -> list[tuple[TopicStore, RecoveryReport]]:
        """Every topic in DIR, checked (StorageError names the first that is damaged)."""
        opened = []
        for directory in sorted(p for p in self.topics_path.iterdir() if p.is_dir()):
            opened.append(TopicStore.open(directory, repair=repair, segment_bytes=segment_bytes))
        return opened

    def create_topic(self, name: str, first_seq: int, segment_bytes: int) -> TopicStore:
        try:
            return TopicStore.create(self.topics_path, name, first_seq, segment_bytes)
        except OSError as exc:
            raise StorageError(f"cannot create topic {name!r} in {self.topics_path}: "
                               f"{exc.strerror or exc}") from None

    def load_durables(self) -> dict[str, tuple[str, dict[str, int]]]:
        """name -> (pattern, {topic: first unacknowledged seq})."""
        path = self.path / "durables.bin"
        if not path.exists():
            return {}
        try:
            data: dict[str, Any] = msgpack.unpackb(path.read_bytes())
            return {name: (entry["pattern"], dict(entry["acked"]))
                    for name, entry in data.items()}
        except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
            raise StorageError(f"{path} is damaged ({exc}); move it away to start without "
                               "the durable positions") from None

    def save_durables(self, durables: dict[str, tuple[str, dict[str, int]]]) -> None:
        data = {name: {"pattern": pattern, "acked": acked}
                for name, (pattern, acked) in durables.items()}
        self._write_atomically(self.path / "durables.bin", msgpack.packb(data))

    def _write_atomically(self, path: Path, data: bytes) -> None:
        """Write, (fsync,) rename: a crash leaves the old file or the new one, never half."""
        temporary = path.with_name(path.name + ".tmp")
        with temporary.open("wb") as file:
            file.write(data)
            if self.fsync != "never":
                file.flush()
                os.fsync(file.fileno())
        os.replace(temporary, path)
