"""Reading and writing recorded live timing: FastF1's save format and F1's static archive.

FastF1 (`python -m fastf1.livetiming save`) writes one Python literal per
line: `['TimingData', {...}, '2021-03-28T14:52:32.124Z']`, `.z` payloads as
received. F1's static archive serves one file per topic, `<Topic>.jsonStream`,
each line `HH:MM:SS.mmm` (offset from the stream's start) glued to a JSON
message, sometimes behind a UTF-8 byte-order mark. Damaged lines are skipped
and counted, never fatal. Pure functions on text: no I/O beyond opening files.
"""

from __future__ import annotations

import ast
import heapq
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from f1vocab.timing import FeedError, parse_utc
from producer.livetiming.feed import FeedMessage, decode_z

log = logging.getLogger("slipstream.livetiming")

BOM = "\ufeff"


@dataclass
class ReadReport:
    """What reading a recording found: how many messages, how many damaged lines and where."""

    messages: int = 0
    damaged: int = 0
    duplicates: int = 0
    first_damage: list[str] = field(default_factory=list)  # the first few, for the log

    def damage(self, where: str, reason: str) -> None:
        self.damaged += 1
        if len(self.first_damage) < 5:
            self.first_damage.append(f"{where}: {reason}")


# --- FastF1's format -------------------------------------------------------------


def parse_fastf1_line(line: str) -> FeedMessage:
    """One line of a FastF1 recording -> FeedMessage, or FeedError saying what is wrong."""
    try:
        value = ast.literal_eval(line.strip())
    except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
        raise FeedError(f"not a Python literal ({type(exc).__name__})") from None
    if not isinstance(value, list) or len(value) != 3:
        size = f" of {len(value)}" if isinstance(value, list) else ""
        raise FeedError(f"expected [topic, data, timestamp], got a {type(value).__name__}{size}")
    topic, data, timestamp = value
    if not isinstance(topic, str) or not isinstance(timestamp, str):
        raise FeedError("topic and timestamp must be strings")
    parse_utc(timestamp)
    if topic.endswith(".z"):
        decode_z(data)  # a damaged payload is a damaged line
    elif not isinstance(data, dict):
        raise FeedError(f"data of {topic} must be a dict, got {type(data).__name__}")
    return FeedMessage(topic, data, timestamp=timestamp)


def format_fastf1_line(message: FeedMessage) -> str:
    """The inverse: what FastF1 writes for one message (a Python literal list)."""
    return repr([message.topic, message.data, message.timestamp])


def read_fastf1(paths: Iterable[Path], report: ReadReport) -> list[FeedMessage]:
    """Every valid message of one or more FastF1 recordings, in the order they were received.

    A recorder writes in arrival order, which is the order to keep: its
    timestamps come from two clocks (F1's, and the recorder's for the state
    Subscribe returns), so sorting by them would shuffle a recording. Several
    files are taken one after the other, earliest start first; a message
    already seen in an earlier file (two recorders, or a restart with
    --append) is dropped.
    """
    files = [_read_fastf1_file(path, report) for path in paths]
    files.sort(key=lambda messages: messages[0].sort_key() if messages else 0.0)
    seen: set[str] = set()
    merged: list[FeedMessage] = []
    for messages in files:
        in_this_file: set[str] = set()
        for message in messages:
            key = format_fastf1_line(message)  # within one file a repeat is a real message
            if key in seen:
                report.duplicates += 1
                continue
            in_this_file.add(key)
            merged.append(message)
        seen |= in_this_file
    report.messages += len(merged)
    return mark_snapshots(merged)


def _read_fastf1_file(path: Path, report: ReadReport) -> list[FeedMessage]:
    messages = []
    with path.open(encoding="utf-8-sig", errors="replace") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                messages.append(parse_fastf1_line(line))
            except FeedError as exc:
                report.damage(f"{path.name}:{number}", str(exc))
    return messages


# --- F1's static archive -----------------------------------------------------------


def parse_offset(text: str) -> float:
    """'HH:MM:SS.mmm' -> seconds."""
    try:
        hours, minutes, seconds = text.split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        raise FeedError(f"bad offset {text!r}") from None


def parse_jsonstream_line(topic: str, line: str) -> FeedMessage:
    """One line of `<Topic>.jsonStream` -> FeedMessage."""
    line = line.lstrip(BOM).strip()
    if len(line) < 13 or line[2] != ":" or line[5] != ":":
        raise FeedError("line does not start with HH:MM:SS.mmm")
    offset = parse_offset(line[:12])
    try:
        data = json.loads(line[12:])
    except json.JSONDecodeError as exc:
        raise FeedError(f"bad JSON: {exc}") from None
    if topic.endswith(".z"):
        decode_z(data)
    return FeedMessage(topic, data, offset_s=offset)


def read_archive_folder(folder: Path, report: ReadReport,
                        topics: Iterable[str] | None = None) -> list[FeedMessage]:
    """Every `<Topic>.jsonStream` in `folder`, merged by time (ties keep topic-file order)."""
    wanted = set(topics) if topics is not None else None
    streams: list[Iterator[tuple[float, int, FeedMessage]]] = []
    for order, path in enumerate(sorted(folder.glob("*.jsonStream"))):
        topic = path.name.removesuffix(".jsonStream")
        if wanted is None or topic in wanted:
            streams.append(_archive_stream(path, topic, order, report))
    messages = [message for _, _, message in heapq.merge(*streams)]
    report.messages += len(messages)
    return mark_snapshots(messages)


def _archive_stream(path: Path, topic: str, order: int,
                    report: ReadReport) -> Iterator[tuple[float, int, FeedMessage]]:
    last = 0.0
    with path.open(encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip(BOM + " \r\n"):
                continue
            try:
                message = parse_jsonstream_line(topic, line)
            except FeedError as exc:
                report.damage(f"{path.name}:{number}", str(exc))
                continue
            # heapq.merge needs each stream sorted; a line out of order keeps its place.
            last = max(last, message.offset_s or 0.0)
            yield last, order, message


def mark_snapshots(messages: list[FeedMessage]) -> list[FeedMessage]:
    """A recording's first message of each topic is that topic's full state."""
    seen: set[str] = set()
    marked = []
    for message in messages:
        if message.topic not in seen:
            seen.add(message.topic)
            message = FeedMessage(message.topic, message.data, message.timestamp,
                                  message.offset_s, snapshot=True)
        marked.append(message)
    return marked


def read_recording(paths: list[Path], report: ReadReport) -> list[FeedMessage]:
    """An archive folder, or FastF1 recording files: whichever `paths` are."""
    if len(paths) == 1 and paths[0].is_dir():
        return read_archive_folder(paths[0], report)
    folders = [path for path in paths if path.is_dir()]
    if folders:
        raise FeedError(f"give one archive folder or FastF1 files, not both ({folders[0]})")
    return read_fastf1(paths, report)
