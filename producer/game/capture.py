"""The capture file: every datagram with its receive time, append-only, crash-safe to read.

Layout: the 8 bytes `SLIPCAP1`, then one record per datagram:
`<d` receive time (seconds since the Unix epoch), `<I` length, `<I` CRC-32 of
the datagram, then the datagram. A crash can only tear the last record; the
reader detects a torn or corrupt record and stops there, reporting it.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

MAGIC = b"SLIPCAP1"
RECORD = struct.Struct("<dII")


class CaptureWriter:
    def __init__(self, path: Path) -> None:
        exists = path.exists() and path.stat().st_size > 0
        self._file: BinaryIO = path.open("ab")
        if not exists:
            self._file.write(MAGIC)
        self.records = 0

    def write(self, received_s: float, datagram: bytes) -> None:
        self._file.write(RECORD.pack(received_s, len(datagram), zlib.crc32(datagram)) + datagram)
        self.records += 1

    def close(self) -> None:
        self._file.close()


@dataclass
class CaptureReport:
    records: int = 0
    torn: str | None = None  # why reading stopped early, if it did


def read_capture(path: Path, report: CaptureReport) -> Iterator[tuple[float, bytes]]:
    """(receive time s, datagram) for every whole record."""
    data = path.read_bytes()
    if not data.startswith(MAGIC):
        raise ValueError(f"{path} is not a slipstream capture (no {MAGIC.decode()} header)")
    offset = len(MAGIC)
    while offset < len(data):
        if len(data) - offset < RECORD.size:
            report.torn = f"torn record header at byte {offset:,} (ignored)"
            return
        received_s, length, checksum = RECORD.unpack_from(data, offset)
        start = offset + RECORD.size
        datagram = data[start:start + length]
        if len(datagram) < length:
            report.torn = f"torn record at byte {offset:,}: {len(datagram)} of {length} bytes"
            return
        if zlib.crc32(datagram) != checksum:
            report.torn = f"corrupt record at byte {offset:,} (CRC mismatch): stopped there"
            return
        report.records += 1
        yield received_s, datagram
        offset = start + length
