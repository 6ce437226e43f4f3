"""What the application published and the broker has not been sent yet, sans-I/O.

Publishes are grouped per topic ("runs", one PUB frame each in the making),
however the topics interleave: order is kept within a topic, which is all the
protocol promises. `frames()` turns the runs into PUB and PUBM frames. The
outbox outlives a connection: what was published while disconnected goes out
after the reconnect. `W` is whatever the caller waits on for a confirmation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from broker.wire import protocol as p

W = TypeVar("W")

MSGPACK_BIN_HEADER_BYTES = 5
PUBM_HEADER_BYTES = 64


class Run(Generic[W]):
    """Consecutive publishes to one topic, and who waits for which one's seq."""

    __slots__ = ("payloads", "size", "topic", "waiters")

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.payloads: list[bytes] = []
        self.size = 0
        self.waiters: list[tuple[int, W]] = []  # (index in payloads, waiter)


Confirmations = list[tuple[int, list[tuple[int, W]]]]  # confirm_id -> (index, waiter)s


class Outbox(Generic[W]):
    """Runs waiting for the next write."""

    def __init__(self) -> None:
        self._runs: list[Run[W]] = []
        self._open: dict[str, Run[W]] = {}  # per topic, its run still taking payloads
        self.payload_bytes = 0

    def __bool__(self) -> bool:
        return bool(self._runs)

    def add(self, topic: str, payload: bytes, max_run_bytes: int, waiter: W | None) -> None:
        """Append to `topic`'s open run (a new one past `max_run_bytes`)."""
        run = self._open.get(topic)
        if run is None or run.size + len(payload) > max_run_bytes:
            run = self._open[topic] = Run(topic)
            self._runs.append(run)
        if waiter is not None:
            run.waiters.append((len(run.payloads), waiter))
        run.payloads.append(payload)
        run.size += len(payload) + MSGPACK_BIN_HEADER_BYTES
        self.payload_bytes += len(payload)

    def add_many(self, topic: str, payloads: Sequence[bytes], max_run_bytes: int) -> None:
        """Append payloads nobody waits on: a whole list at once when it fits one run."""
        if not payloads:
            return  # an empty run would be an empty PUB, which the broker refuses
        payload_bytes = sum(map(len, payloads))
        size = payload_bytes + MSGPACK_BIN_HEADER_BYTES * len(payloads)
        run = self._open.get(topic)
        if run is None or run.size + size > max_run_bytes:
            if size > max_run_bytes:  # more than a frame's worth: payload by payload
                for payload in payloads:
                    self.add(topic, payload, max_run_bytes, None)
                return
            run = self._open[topic] = Run(topic)
            self._runs.append(run)
        run.payloads.extend(payloads)
        run.size += size
        self.payload_bytes += payload_bytes

    def frames(self, runs_per_frame: bool, max_frame_bytes: int,
               new_confirm_id: Callable[[], int]) -> tuple[list[bytes], Confirmations[W]]:
        """Empty the outbox into frames, and say which confirm_id answers which waiter.

        The runs of several topics share PUBM frames (version 2); a run someone waits
        on gets a PUB of its own, whose PUBACK names its first seq.
        """
        frames: list[bytes] = []
        confirmations: Confirmations[W] = []
        shared: list[tuple[str, list[bytes]]] = []
        shared_size = 0
        room = max_frame_bytes - PUBM_HEADER_BYTES
        for run in self._runs:
            if run.waiters or not runs_per_frame:
                if shared:  # what came before goes first: a topic's runs stay in order
                    frames.append(_shared_frame(shared))
                    shared, shared_size = [], 0
                confirm_id = None
                if run.waiters:
                    confirm_id = new_confirm_id()
                    confirmations.append((confirm_id, run.waiters))
                frames.append(p.encode(p.Publish(run.topic, run.payloads, confirm_id)))
                continue
            size = run.size + len(run.topic) + 8
            if shared and shared_size + size > room:
                frames.append(_shared_frame(shared))
                shared, shared_size = [], 0
            shared.append((run.topic, run.payloads))
            shared_size += size
        if shared:
            frames.append(_shared_frame(shared))
        self._runs = []
        self._open.clear()
        self.payload_bytes = 0
        return frames, confirmations


def _shared_frame(runs: list[tuple[str, list[bytes]]]) -> bytes:
    if len(runs) == 1:
        return p.encode(p.Publish(*runs[0]))
    return p.encode_publish_runs(runs)
