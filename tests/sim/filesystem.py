"""An in-memory file system that keeps what a crash keeps, and fails what it is told to.

A `Files` (broker/storage/files.py) for the crash simulator. Each file holds the bytes
written to it and the bytes that were on the disk at its last fsync; each
directory holds its entries, those at its last fsync, and the changes since
(create, rename, unlink), in order. `crashed()` is the file system a restart
finds:

- after a process crash (SIGKILL), everything written: the kernel has it;
- after a power loss, each file's synced bytes and, of what was written since,
  nothing, all of it, a prefix cut at any byte, or that prefix followed by zeros
  up to the size it had (the size reached the disk, the data did not); each
  directory's synced entries and a prefix of the changes since.

Every call is a step, a read as much as a write. `crash_at(k)` raises
SimulatedCrash at step k before it does anything; `fail_at(k, errno)` makes
step k fail (a write may instead be short: part of it written; a read or a
listing fails with the error, as a bad sector would). `before_step` is
called before each step that changes something: a crash image taken before a
read would be the one taken before the change that preceded it.
"""

from __future__ import annotations

import errno as errnos
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from broker.storage.files import AppendFile

_READS = ("read", "listdir")


class SimulatedCrash(BaseException):
    """The machine stopped at this step (a BaseException: no `except Exception` sees it)."""


@dataclass
class _File:
    data: bytearray = field(default_factory=bytearray)
    synced: bytes = b""


@dataclass
class _Dir:
    entries: dict[str, _File | _Dir] = field(default_factory=dict)
    synced: dict[str, _File | _Dir] = field(default_factory=dict)
    changes: list[tuple[str, str, _File | _Dir | None]] = field(default_factory=list)


@dataclass(frozen=True)
class Fault:
    errno: int
    short: bool = False  # a write writes part of its bytes and says how many


class SimFiles:
    """`Files` in memory, with crash images and injected faults (see the module doc)."""

    def __init__(self, root: _Dir | None = None) -> None:
        self.root = root if root is not None else _Dir()
        self.steps = 0
        self.crash_step: int | None = None
        self.faults: dict[int, Fault] = {}
        self.faults_hit = 0
        # Called with each step's number before the step: to take a crash image there.
        self.before_step: Callable[[int], None] | None = None

    # --- faults ----------------------------------------------------------------------

    def crash_at(self, step: int | None) -> None:
        self.crash_step = step

    def fail_at(self, step: int, fault: Fault) -> None:
        self.faults[step] = fault

    def _step(self, what: str, path: Path) -> Fault | None:
        self.steps += 1
        if self.before_step is not None and what not in _READS:
            self.before_step(self.steps)
        if self.steps == self.crash_step:
            raise SimulatedCrash(f"step {self.steps}: {what} {path}")
        fault = self.faults.get(self.steps)
        if fault is not None:
            self.faults_hit += 1
        return fault

    def _maybe_fail(self, what: str, path: Path) -> Fault | None:
        fault = self._step(what, path)
        if fault is not None and not (fault.short and what == "write"):
            raise OSError(fault.errno, os.strerror(fault.errno), str(path))
        return fault

    # --- lookups -------------------------------------------------------------------------

    def _node(self, path: Path, parts: tuple[str, ...] | None = None) -> _File | _Dir:
        node: _File | _Dir = self.root
        for part in (path.parts if parts is None else parts)[1:]:
            if not isinstance(node, _Dir) or part not in node.entries:
                raise FileNotFoundError(errnos.ENOENT, "No such file or directory", str(path))
            node = node.entries[part]
        return node

    def _file(self, path: Path) -> _File:
        node = self._node(path)
        if not isinstance(node, _File):
            raise IsADirectoryError(errnos.EISDIR, "Is a directory", str(path))
        return node

    def _parent(self, path: Path) -> tuple[_Dir, str]:
        parts = path.parts
        parent = self._node(path, parts[:-1])
        if not isinstance(parent, _Dir):
            raise NotADirectoryError(errnos.ENOTDIR, "Not a directory", str(path))
        return parent, parts[-1]

    def _link(self, path: Path, node: _File | _Dir) -> None:
        parent, name = self._parent(path)
        parent.entries[name] = node
        parent.changes.append(("link", name, node))

    # --- the Files interface ----------------------------------------------------------

    def mkdir(self, path: Path) -> None:
        parent, name = self._parent(path)
        if name in parent.entries:
            raise FileExistsError(errnos.EEXIST, "File exists", str(path))
        self._maybe_fail("mkdir", path)
        self._link(path, _Dir())

    def listdir(self, path: Path) -> list[str]:
        self._maybe_fail("listdir", path)
        node = self._node(path)
        if not isinstance(node, _Dir):
            raise NotADirectoryError(errnos.ENOTDIR, "Not a directory", str(path))
        return list(node.entries)

    def is_dir(self, path: Path) -> bool:
        try:
            return isinstance(self._node(path), _Dir)
        except OSError:
            return False

    def exists(self, path: Path) -> bool:
        try:
            self._node(path)
        except OSError:
            return False
        return True

    def size(self, path: Path) -> int:
        return len(self._file(path).data)

    def read(self, path: Path, offset: int = 0, length: int = -1) -> bytes:
        self._maybe_fail("read", path)
        data = self._file(path).data
        return bytes(data[offset:] if length < 0 else data[offset:offset + length])

    def open_append(self, path: Path) -> AppendFile:
        self._maybe_fail("open", path)
        if not self.exists(path):
            self._link(path, _File())
        return _SimAppendFile(self, self._file(path), path)

    def write_file(self, path: Path, data: bytes, fsync: bool) -> None:
        self._maybe_fail("create", path)
        if self.exists(path):
            self._file(path).data.clear()
        else:
            self._link(path, _File())
        handle = _SimAppendFile(self, self._file(path), path)
        written = handle.write(data)
        if written != len(data):
            raise OSError(errnos.ENOSPC, os.strerror(errnos.ENOSPC), str(path))
        if fsync:
            handle.fsync()

    def rename(self, source: Path, target: Path) -> None:
        parent, name = self._parent(source)
        if Path(target).parent != Path(source).parent:
            raise OSError(errnos.EXDEV, "the simulator renames within one directory only")
        node = self._node(source)
        self._maybe_fail("rename", source)
        del parent.entries[name]
        parent.entries[Path(target).name] = node
        parent.changes.append(("rename", f"{name}\0{Path(target).name}", node))

    def truncate(self, path: Path, size: int) -> None:
        node = self._file(path)
        self._maybe_fail("truncate", path)
        _resize(node, size)

    def unlink(self, path: Path) -> None:
        parent, name = self._parent(path)
        self._file(path)
        self._maybe_fail("unlink", path)
        del parent.entries[name]
        parent.changes.append(("unlink", name, None))

    def rmdir(self, path: Path) -> None:
        parent, name = self._parent(path)
        node = self._node(path)
        if not isinstance(node, _Dir) or node.entries:
            raise OSError(errnos.ENOTEMPTY, "Directory not empty", str(path))
        self._maybe_fail("rmdir", path)
        del parent.entries[name]
        parent.changes.append(("unlink", name, None))

    def fsync(self, path: Path) -> None:
        node = self._node(path)
        self._maybe_fail("fsync", path)
        _sync(node)

    def lock(self, path: Path, holder: str) -> AppendFile:
        return _NoLock()

    # --- crashes -------------------------------------------------------------------------

    def crashed(self, rng: random.Random, power_loss: bool) -> SimFiles:
        """The file system a restart finds after a crash now (see the module doc)."""
        return SimFiles(_dir_image(self.root, rng, power_loss))

    def flip_bit(self, rng: random.Random, suffixes: tuple[str, ...]) -> str | None:
        """Flip one bit of one byte of a file whose name ends with one of `suffixes`, as a
        bad disk would; where it was, or None when there is no such file."""
        found: list[tuple[str, _File]] = []
        _walk(self.root, "", found)
        candidates = [(p, f) for p, f in found if p.endswith(suffixes) and f.data]
        if not candidates:
            return None
        where, node = rng.choice(candidates)
        offset = rng.randrange(len(node.data))
        node.data[offset] ^= 1 << rng.randrange(8)
        node.synced = bytes(node.data)
        return f"{where} byte {offset}"


class _SimAppendFile:
    def __init__(self, files: SimFiles, node: _File, path: Path) -> None:
        self._files, self._node, self._path = files, node, path

    def write(self, data: bytes) -> int:
        fault = self._files._maybe_fail("write", self._path)
        if fault is not None:  # a short write: part of it reached the file
            part = len(data) // 2
            self._node.data += data[:part]
            return part
        self._node.data += data
        return len(data)

    def truncate(self, size: int) -> None:
        self._files._maybe_fail("truncate", self._path)
        _resize(self._node, size)

    def fsync(self) -> None:
        self._files._maybe_fail("fsync", self._path)
        _sync(self._node)

    def close(self) -> None:
        pass


class _NoLock:
    def write(self, data: bytes) -> int:
        return len(data)

    def truncate(self, size: int) -> None:
        pass

    def fsync(self) -> None:
        pass

    def close(self) -> None:
        pass


def _resize(node: _File, size: int) -> None:
    if size < len(node.data):
        del node.data[size:]
    else:
        node.data += bytes(size - len(node.data))


def _sync(node: _File | _Dir) -> None:
    if isinstance(node, _File):
        node.synced = bytes(node.data)
    else:
        node.synced = dict(node.entries)
        node.changes.clear()


def _walk(directory: _Dir, prefix: str, found: list[tuple[str, _File]]) -> None:
    for name, node in directory.entries.items():
        if isinstance(node, _Dir):
            _walk(node, f"{prefix}/{name}", found)
        else:
            found.append((f"{prefix}/{name}", node))


def _dir_image(directory: _Dir, rng: random.Random, power_loss: bool) -> _Dir:
    if power_loss:
        entries = dict(directory.synced)
        changes = directory.changes
        kept = rng.choice((0, len(changes), rng.randint(0, len(changes))))
        for kind, name, node in changes[:kept]:
            if kind == "link":
                assert node is not None
                entries[name] = node
            elif kind == "unlink":
                entries.pop(name, None)
            else:
                source, target = name.split("\0")
                moved = entries.pop(source, None)
                if moved is not None:
                    entries[target] = moved
    else:
        entries = dict(directory.entries)
    image = _Dir()
    for name, node in entries.items():
        image.entries[name] = (_dir_image(node, rng, power_loss) if isinstance(node, _Dir)
                               else _File(*_file_image(node, rng, power_loss)))
    image.synced = dict(image.entries)
    return image


def _file_image(node: _File, rng: random.Random, power_loss: bool) -> tuple[bytearray, bytes]:
    data, synced = bytes(node.data), node.synced
    if power_loss and data != synced:
        common = _common_prefix(data, synced)
        cut = rng.randint(common, len(data))
        data = rng.choice((synced, data, data[:cut], data[:cut] + bytes(len(data) - cut)))
    return bytearray(data), data


def _common_prefix(a: bytes, b: bytes) -> int:
    if a.startswith(b):
        return len(b)  # the usual case: appended to since the last fsync
    low, high = 0, min(len(a), len(b))
    while low < high:  # bisect on slices: C compares, not a Python loop per byte
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low
