"""The broker's data directory (--data-dir): the lock, the epoch, durable positions, topics.

    DIR/LOCK            held (flock) by the one broker using DIR; says its pid
    DIR/EPOCH           the epoch, chosen when DIR was created and kept after
    DIR/durables.bin    durable positions (msgpack), replaced atomically when they move
    DIR/topics/NAME/    one topic's segments (broker/storage/segments.py)

See docs/storage.md. File work only, through a `Files`; the broker decides when.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import msgpack

from broker.errors import StorageError
from broker.storage.files import AppendFile, Files, LockHeldError, replace_file
from broker.storage.recovery import RecoveryReport, held_nothing, open_topic
from broker.storage.segments import (
    NEW_TOPIC_PREFIX,
    REAL_FILES,
    FsyncPolicy,
    TopicStore,
    remove_directory,
)

__all__ = ["DATA_DIR_ENV", "DataDir", "FsyncPolicy"]

DATA_DIR_ENV = "SLIPSTREAM_DATA_DIR"
Positions = dict[str, tuple[str, dict[str, int]]]  # durable -> (pattern, {topic: seq})


class DataDir:
    def __init__(self, path: Path, fsync: FsyncPolicy = "interval",
                 files: Files = REAL_FILES) -> None:
        self.path = path
        self.fsync = fsync
        self.files = files
        self.topics_path = path / "topics"
        self.epoch = 0
        self.notes: list[str] = []  # what opening found and did, for the log
        self._lock: AppendFile | None = None

    @property
    def durable(self) -> bool:
        return self.fsync != "never"

    def open(self, repair: bool = False) -> None:
        """Create or open DIR, take its lock and read (or choose) the epoch."""
        try:
            self._open(repair)
        except OSError as exc:
            self.close()
            raise StorageError(f"cannot open data directory {self.path}: "
                               f"{exc.strerror or exc}") from None
        except StorageError:
            self.close()
            raise

    def _open(self, repair: bool) -> None:
        files = self.files
        try:
            self._make_directories()
            self._lock = files.lock(self.path / "LOCK", f"{os.getpid()}\n")
        except LockHeldError as held:
            raise StorageError(f"data directory {self.path} is in use by another broker "
                               f"(pid {held or '?'}); one broker per directory") from None
        except OSError as exc:
            raise StorageError(f"cannot use data directory {self.path}: "
                               f"{exc.strerror or exc}") from None
        epoch_file = self.path / "EPOCH"
        if files.exists(epoch_file):
            text = files.read(epoch_file).decode(errors="replace").strip()
            if not text.isdigit():
                raise StorageError(f"{epoch_file} does not hold an epoch (a number): {text!r}")
            self.epoch = int(text)
            return
        topics = [n for n in files.listdir(self.topics_path) if not n.startswith(".")]
        if topics and not repair:
            raise StorageError(
                f"{epoch_file} is missing, but {self.topics_path} holds {len(topics):,} topics: "
                "with a new epoch, (epoch, topic, seq) would name other messages than before. "
                "Put EPOCH back, or start with --repair to give the data a new epoch")
        if topics:
            self.notes.append(f"{epoch_file} was missing: the data has a new epoch (--repair)")
        self.epoch = time.time_ns() // 1000
        replace_file(files, epoch_file, f"{self.epoch}\n".encode(), durable=self.durable)

    def _make_directories(self) -> None:
        """DIR and DIR/topics, made if missing. Their entries are synced at every start, not
        only when made: a start that failed after the mkdir left them unsynced."""
        missing = [p for p in (self.topics_path, *self.topics_path.parents)
                   if not self.files.exists(p)]
        for directory in reversed(missing):
            self.files.mkdir(directory)
        if self.durable:
            for directory in (self.path.parent, self.path):
                self.files.fsync(directory)

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def open_topics(self, repair: bool, segment_bytes: int,
                    verify: bool = False) -> list[tuple[TopicStore, RecoveryReport]]:
        """Every topic in DIR, checked (StorageError names the first that is damaged).
        A directory a crash left before it held anything is removed, with a note."""
        try:
            return self._open_topics(repair, segment_bytes, verify)
        except OSError as exc:
            raise StorageError(f"cannot recover the topics in {self.topics_path}: "
                               f"{exc.strerror or exc}") from None

    def _open_topics(self, repair: bool, segment_bytes: int,
                     verify: bool) -> list[tuple[TopicStore, RecoveryReport]]:
        files = self.files
        opened = []
        for name in sorted(files.listdir(self.topics_path)):
            directory = self.topics_path / name
            if not files.is_dir(directory):
                continue
            if name.startswith(NEW_TOPIC_PREFIX):
                remove_directory(files, directory)
                self.notes.append(f"removed {directory}: a topic a crash left half-made "
                                  "(it held nothing)")
                continue
            try:
                opened.append(open_topic(directory, repair=repair, verify=verify,
                                         segment_bytes=segment_bytes, files=files,
                                         fsync=self.fsync))
            except StorageError:
                if not held_nothing(files, directory):
                    raise
                remove_directory(files, directory)
                self.notes.append(f"removed {directory}: a topic directory a crash left "
                                  "before anything was stored in it")
        if self.durable:  # the topics found, and what recovery removed, stay so
            files.fsync(self.topics_path)
        return opened

    def create_topic(self, name: str, first_seq: int, segment_bytes: int) -> TopicStore:
        try:
            return TopicStore.create(self.topics_path, name, first_seq, segment_bytes,
                                     files=self.files, fsync=self.fsync)
        except OSError as exc:
            raise StorageError(f"cannot create topic {name!r} in {self.topics_path}: "
                               f"{exc.strerror or exc}") from None

    def load_durables(self) -> Positions:
        """name -> (pattern, {topic: first unacknowledged seq})."""
        path = self.path / "durables.bin"
        if not self.files.exists(path):
            return {}
        try:
            raw = self.files.read(path)
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc.strerror or exc}") from None
        try:
            data: dict[str, Any] = msgpack.unpackb(raw)
            return {name: (entry["pattern"], dict(entry["acked"]))
                    for name, entry in data.items()}
        except (ValueError, KeyError, TypeError, AttributeError, msgpack.UnpackException) as exc:
            raise StorageError(f"{path} is damaged ({exc}); move it away to start without "
                               "the durable positions") from None

    def save_durables(self, durables: Positions) -> None:
        """Replace durables.bin atomically (fsynced unless --fsync never). OSError if not."""
        data = {name: {"pattern": pattern, "acked": acked}
                for name, (pattern, acked) in durables.items()}
        replace_file(self.files, self.path / "durables.bin", msgpack.packb(data),
                     durable=self.durable)
