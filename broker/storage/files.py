"""Every file operation the on-disk store does, behind one small interface (`Files`).

The store (broker/storage/segments.py, broker/storage/datadir.py) never calls `os` itself: it
asks a `Files`. `RealFiles` is the operating system; the crash simulator
(tests/sim/filesystem.py) is another `Files` that keeps what a crash would keep
and can fail any call, so the store's recovery is tested against every crash
point and every I/O error, as SQLite's test VFS does (docs/storage.md).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Protocol


class AppendFile(Protocol):
    """A file opened for appending (a segment being written)."""

    def write(self, data: bytes) -> int:
        """Append `data`; returns how much was written (less when the disk is full)."""
        ...

    def truncate(self, size: int) -> None: ...

    def fsync(self) -> None: ...

    def close(self) -> None: ...


class LockHeldError(Exception):
    """Another process holds the lock; the message is what that process wrote in it."""


class Files(Protocol):
    """The file operations of the store. Paths are absolute or relative to the working
    directory; a rename stays within one directory."""

    def mkdir(self, path: Path) -> None:
        """Create one directory (its parent exists); FileExistsError if it is there."""
        ...

    def listdir(self, path: Path) -> list[str]: ...

    def is_dir(self, path: Path) -> bool: ...

    def exists(self, path: Path) -> bool: ...

    def size(self, path: Path) -> int: ...

    def read(self, path: Path, offset: int = 0, length: int = -1) -> bytes:
        """`length` bytes from `offset` (all the rest when -1); fewer at the end."""
        ...

    def open_append(self, path: Path) -> AppendFile:
        """Open `path` for appending, creating it empty if it is missing."""
        ...

    def write_file(self, path: Path, data: bytes, fsync: bool) -> None:
        """Create or replace `path` with `data` (not atomic: see `replace_file`)."""
        ...

    def rename(self, source: Path, target: Path) -> None:
        """Atomically give `source` the name `target`, replacing what was there."""
        ...

    def truncate(self, path: Path, size: int) -> None: ...

    def unlink(self, path: Path) -> None: ...

    def rmdir(self, path: Path) -> None: ...

    def fsync(self, path: Path) -> None:
        """Make a file's data, or a directory's entries, survive a power loss."""
        ...

    def lock(self, path: Path, holder: str) -> AppendFile:
        """Take an exclusive lock on `path` (created if missing) and write `holder` in it;
        LockHeldError with what the holder wrote when another process has it. Closing
        the returned file releases the lock."""
        ...


def replace_file(files: Files, path: Path, data: bytes, durable: bool) -> None:
    """Write `data` to `path` so that a crash leaves the old file or the new, never half:
    write a temporary file (fsynced when `durable`), rename it over `path`, and fsync
    the directory so that the rename itself survives a power loss."""
    temporary = path.with_name(path.name + ".tmp")
    files.write_file(temporary, data, fsync=durable)
    files.rename(temporary, path)
    if durable:
        files.fsync(path.parent)


class _OsAppendFile:
    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def write(self, data: bytes) -> int:
        return os.write(self._fd, data)

    def truncate(self, size: int) -> None:
        os.ftruncate(self._fd, size)

    def fsync(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


class RealFiles:
    """`Files` on the operating system's file system."""

    def mkdir(self, path: Path) -> None:
        os.mkdir(path)

    def listdir(self, path: Path) -> list[str]:
        return os.listdir(path)

    def is_dir(self, path: Path) -> bool:
        return path.is_dir()

    def exists(self, path: Path) -> bool:
        return path.exists()

    def size(self, path: Path) -> int:
        return os.stat(path).st_size

    def read(self, path: Path, offset: int = 0, length: int = -1) -> bytes:
        with path.open("rb") as file:
            file.seek(offset)
            return file.read(length)

    def open_append(self, path: Path) -> AppendFile:
        return _OsAppendFile(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644))

    def write_file(self, path: Path, data: bytes, fsync: bool) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def rename(self, source: Path, target: Path) -> None:
        os.replace(source, target)

    def truncate(self, path: Path, size: int) -> None:
        os.truncate(path, size)

    def unlink(self, path: Path) -> None:
        os.unlink(path)

    def rmdir(self, path: Path) -> None:
        os.rmdir(path)

    def fsync(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def lock(self, path: Path, holder: str) -> AppendFile:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held_by = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise LockHeldError(held_by) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode(), 0)
        return _OsAppendFile(fd)
