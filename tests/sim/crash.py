"""The crash simulator: the broker's real storage code, crashed and failed at every step.

A workload (publish runs to new and old topics, syncs, durables and their
acks, restarts, --repair) runs through the same objects the broker uses
(`DiskStorage`, `DataDir`, `DiskTopicLog`, `TopicStore`) over `SimFiles`. A
`Model` follows what each call answered: confirmed (the PUBACK), refused (an
ERROR), or in doubt (the crash came first). Then:

- `run_crash`: the machine stops at step k (a process crash, or a power loss
  that keeps a seeded random part of what was not synced), the broker starts
  again and `check` compares the log with the model;
- `run_fault`: step k fails (ENOSPC, EIO, EDQUOT, or a short write), the
  workload goes on as the broker would, the live log is checked, then a crash
  and a recovery are;
- `run_flip`: one bit of a segment or index file flips while the broker is
  down; the start refuses, repairs or reports it, and no flipped record is
  ever served as data.

Everything is seeded: the same arguments give the same run, every time.
"""

from __future__ import annotations

import copy
import errno
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

from broker.errors import StorageError
from broker.storage.datadir import DataDir, Positions
from broker.storage.segments import FsyncPolicy, UnreadableRangeError
from broker.storage.storage import DiskStorage, TopicStorage
from broker.storage.topics import ByteBudget, Retention
from tests.sim.filesystem import Fault, SimFiles, SimulatedCrash

DATA = Path("/data")
SEGMENT_BYTES = 600  # tiny, so that workloads roll segments and retention deletes them
RETENTION = Retention(max_messages=40, max_bytes=3000)
FAULTS = (Fault(errno.ENOSPC), Fault(errno.EIO), Fault(errno.EDQUOT), Fault(errno.ENOSPC, True))


class Op(NamedTuple):
    """One step of a workload: ("pub", topic, number, size), ("sync",), ("durable", topic,
    name=), ("ack", topic, number, name=), ("read",) (every topic from earliest, as a
    subscriber catching up), ("restart",), ("repair",)."""

    kind: Literal["pub", "sync", "durable", "ack", "read", "restart", "repair"]
    topic: str = ""
    number: int = 0  # of payloads, or of messages acknowledged
    size: int = 0
    name: str = ""


@dataclass
class Model:
    """What the broker told its clients, so what the disk must (and must not) give back."""

    epoch: int | None = None
    confirmed: dict[str, dict[int, bytes]] = field(default_factory=dict)
    in_doubt: dict[str, dict[int, bytes]] = field(default_factory=dict)
    refused: set[bytes] = field(default_factory=set)
    synced_to: dict[str, int] = field(default_factory=dict)  # seqs below survive power loss
    first_seq: dict[str, int] = field(default_factory=dict)
    durables: dict[str, dict[str, int]] = field(default_factory=dict)  # as the broker had them
    durables_synced: set[str] = field(default_factory=set)  # created, saved with fsync
    published: int = 0  # payloads made so far: each one is unique

    def must_keep(self, topic: str, seq: int, power_loss: bool) -> bool:
        return not power_loss or seq < self.synced_to.get(topic, 1)


class Harness:
    """The broker's storage calls, in the broker's order, over one `SimFiles`."""

    def __init__(self, files: SimFiles, policy: FsyncPolicy, model: Model | None = None) -> None:
        self.files = files
        self.policy = policy
        self.model = model if model is not None else Model()
        self.storage: DiskStorage | None = None
        self.topics: dict[str, TopicStorage] = {}
        self.positions: Positions = {}
        self.durables_dirty = False
        self.notes: list[str] = []
        self.holes: list[tuple[str, int, int]] = []
        self.problems: list[str] = []  # found while the workload ran (its "read" steps)

    # --- the broker's life -----------------------------------------------------------

    def open(self, repair: bool = False) -> None:
        storage = DiskStorage(DataDir(DATA, self.policy, self.files), RETENTION,
                              ByteBudget(1 << 40), 0.0, SEGMENT_BYTES, repair=repair,
                              verify=repair)
        epoch, topics, durables, notes = storage.open()
        assert epoch is not None
        self.storage = storage
        self.notes = notes
        self.topics = {t.name: t for t in topics}
        self.positions = durables
        if self.model.epoch is None:
            self.model.epoch = epoch
        elif epoch != self.model.epoch:
            raise AssertionError(f"the epoch changed: {self.model.epoch} -> {epoch}")

    def open_as_an_operator_would(self, repair: bool = False) -> None:
        """Start; a start refused by an injected fault is tried again once the disk is
        sound (as systemd would), which must then succeed."""
        try:
            self.open(repair)
        except StorageError:
            if not self.files.faults:
                raise
            self.files.faults.clear()
            self.open(repair)

    def close(self) -> None:
        """A clean shutdown: sync every topic, save the durables, close."""
        assert self.storage is not None
        for topic in self.topics.values():
            self._sync(topic)
        self._save_durables()
        for topic in self.topics.values():
            topic.release()
        self.storage.close()
        self.storage = None

    # --- operations ------------------------------------------------------------------

    def apply(self, op: Op) -> None:
        if op.kind == "pub":
            self.publish(op.topic, [self.payload(op.topic, op.size) for _ in range(op.number)])
        elif op.kind == "sync":
            for topic in self.topics.values():
                if topic.unsynced:
                    self._sync(topic)
            if self.durables_dirty:
                self._save_durables()
        elif op.kind == "durable":
            self.new_durable(op.name, op.topic)
        elif op.kind == "ack":
            self.ack(op.name, op.topic, op.number)
        elif op.kind == "read":
            self.read_as_a_subscriber()
        else:
            self.close()
            self.open_as_an_operator_would(repair=op.kind == "repair")

    def payload(self, topic: str, size: int) -> bytes:
        """A payload no other call makes (the model tells them apart by their bytes)."""
        self.model.published += 1
        number = self.model.published
        head = f"{topic}#{number}:".encode()
        return head + bytes([number % 251]) * max(0, size - len(head))

    def publish(self, name: str, payloads: list[bytes]) -> None:
        model = self.model
        topic = self.topics.get(name)
        if topic is None:
            try:
                assert self.storage is not None
                topic = self.topics[name] = self.storage.create(name, 1)
            except StorageError:
                model.refused.update(payloads)
                return
        first = topic.next_seq
        doubt = model.in_doubt.setdefault(name, {})
        doubt.update(zip(range(first, first + len(payloads)), payloads, strict=True))
        try:
            seq = topic.append(payloads, self.model.published)
        except StorageError:
            doubt.clear()
            model.refused.update(payloads)
            return
        doubt.clear()
        assert seq == first, f"{name}: append gave seq {seq}, expected {first}"
        model.confirmed.setdefault(name, {}).update(
            zip(range(first, first + len(payloads)), payloads, strict=True))
        if self.policy == "always":
            model.synced_to[name] = topic.next_seq
        model.first_seq[name] = topic.first_seq

    def _sync(self, topic: TopicStorage) -> None:
        written_to = topic.next_seq
        try:
            topic.sync()
        except StorageError:
            return  # the topic is stopped: its PUBs are refused from now on
        if self.policy != "never":
            self.model.synced_to[topic.name] = written_to

    def new_durable(self, name: str, topic_name: str) -> None:
        topic = self.topics.get(topic_name)
        if topic is None or name in self.positions:
            return
        self.positions[name] = (topic_name, {topic_name: topic.next_seq})
        if not self._save_durables():  # before the SUBACK, as the broker does
            del self.positions[name]
            return
        self.model.durables[name] = {topic_name: topic.next_seq}
        if self.policy != "never":
            self.model.durables_synced.add(name)

    def ack(self, name: str, topic_name: str, count: int) -> None:
        topic = self.topics.get(topic_name)
        if topic is None or name not in self.positions:
            return
        acked = self.positions[name][1]
        acked[topic_name] = min(acked.get(topic_name, 1) + count, topic.next_seq)
        self.model.durables[name][topic_name] = acked[topic_name]
        self.durables_dirty = True
        if self.policy == "always":
            self._save_durables()

    def _save_durables(self) -> bool:
        assert self.storage is not None
        try:
            self.storage.save_durables(self.positions)
        except OSError:
            self.durables_dirty = True
            return False
        self.durables_dirty = False
        return True

    def read_as_a_subscriber(self) -> None:
        """Every topic from its first seq: what is served must be what was published at
        that seq; what is not must be announced (an UnreadableRangeError: a GAP), and only
        when a fault made a read fail."""
        for name, topic in self.topics.items():
            before = len(self.holes)
            got = self.read_all(topic)
            announced = {seq for _, first, end in self.holes[before:] for seq in range(first, end)}
            del self.holes[before:]
            confirmed = self.model.confirmed.get(name, {})
            for seq, payload in got.items():
                if confirmed.get(seq) != payload:
                    self.problems.append(f"{name} seq {seq}: a reader was served {payload[:24]!r}")
            missing = [s for s in confirmed if s >= topic.first_seq and s not in got]
            if [s for s in missing if s not in announced]:
                self.problems.append(f"{name}: a reader missed seqs {missing[:5]} unannounced")
            if announced and not self.files.faults_hit:
                self.problems.append(f"{name}: a GAP for seqs {sorted(announced)[:5]} with no "
                                     "fault to cause it")

    # --- checks ----------------------------------------------------------------------

    def read_all(self, topic: TopicStorage) -> dict[int, bytes]:
        """Every record from the first seq, as a subscriber from earliest gets them; the
        ranges it is told it cannot have go to `self.holes`."""
        got: dict[int, bytes] = {}
        seq = topic.first_seq
        while seq < topic.next_seq:
            try:
                _, payloads = topic.read(seq, 1000, 1 << 20)
            except UnreadableRangeError as hole:
                self.holes.append((topic.name, hole.first, hole.end))
                seq = hole.end
                continue
            assert payloads, f"{topic.name}: nothing read at seq {seq} below {topic.next_seq}"
            got.update(zip(range(seq, seq + len(payloads)), payloads, strict=True))
            seq += len(payloads)
        return got

    def check(self, power_loss: bool, holes_allowed: bool = False) -> list[str]:
        """What the log holds against what the model says it must and must not."""
        model, problems = self.model, []
        for name, topic in self.topics.items():
            confirmed = model.confirmed.get(name, {})
            doubt = model.in_doubt.get(name, {})
            got = self.read_all(topic)
            for seq, payload in got.items():
                if payload in model.refused:
                    problems.append(f"{name} seq {seq}: a refused payload is served")
                elif confirmed.get(seq, doubt.get(seq)) != payload:
                    problems.append(f"{name} seq {seq}: served {payload[:24]!r}, which was "
                                    "never published at that seq")
            # An append in doubt may have moved the start (its retention ran): not checked.
            if not doubt and topic.first_seq > model.first_seq.get(name, topic.first_seq):
                problems.append(f"{name}: the log now starts at {topic.first_seq}, it started "
                                f"at {model.first_seq[name]}")
            lost = [seq for seq in confirmed if seq >= topic.first_seq and seq not in got
                    and model.must_keep(name, seq, power_loss)]
            if lost and not holes_allowed:
                problems.append(f"{name}: confirmed seqs lost: {lost[:10]}")
        for name in model.confirmed:
            if name not in self.topics and any(model.must_keep(name, seq, power_loss)
                                               for seq in model.confirmed[name]):
                problems.append(f"topic {name} with confirmed messages is gone")
        if self.holes and not holes_allowed:
            problems.append(f"holes reported: {self.holes[:5]}")
        problems.extend(self._check_durables(power_loss))
        return problems

    def _check_durables(self, power_loss: bool) -> list[str]:
        problems = []
        for name, had in self.model.durables.items():
            if name not in self.positions:
                if not power_loss or name in self.model.durables_synced:
                    problems.append(f"durable {name} was forgotten")
                continue
            for topic, seq in self.positions[name][1].items():
                log = self.topics.get(topic)
                if log is not None and seq > log.next_seq:
                    problems.append(f"durable {name} resumes {topic} at {seq}, past its end "
                                    f"({log.next_seq}): it would skip new messages")
                if seq > had.get(topic, 1):
                    problems.append(f"durable {name} resumes {topic} at {seq}, after what it "
                                    f"acknowledged ({had.get(topic)})")
        return problems

    def recovered(self) -> None:
        """After a crash and a start, what the log holds is the record: the model follows."""
        model = self.model
        model.in_doubt.clear()
        for name, topic in self.topics.items():
            got = self.read_all(topic)
            model.confirmed[name] = got
            model.synced_to[name] = topic.next_seq
            model.first_seq[name] = topic.first_seq
        for name in [n for n in model.confirmed if n not in self.topics]:
            del model.confirmed[name]
        model.durables = {name: dict(acked) for name, (_, acked) in self.positions.items()}
        model.durables_synced = set(model.durables)


# --- runs ------------------------------------------------------------------------------


# Each run returns None when the workload never reached what it was to test (a step past
# its end, a fault on a call it never made), else the problems it found (none: it held).
Problems = list[str] | None


def _run_workload(harness: Harness, workload: Iterable[Op]) -> list[str]:
    """Run it from the start to a clean shutdown; what its read steps found wrong."""
    harness.open_as_an_operator_would()
    for op in workload:
        harness.apply(op)
    harness.close()
    return harness.problems


def _restart_and_check(files: SimFiles, model: Model, policy: FsyncPolicy, power_loss: bool,
                       rng: random.Random) -> list[str]:
    """Start on `files` as a supervisor would, check, go on publishing, restart, check."""
    harness = Harness(files, policy, model)
    try:
        harness.open()
    except StorageError as exc:
        return [f"the start after it needs a human: {exc}"]
    except AssertionError as exc:
        return [str(exc)]
    problems = harness.check(power_loss)
    if problems:
        return problems
    harness.recovered()
    expected = {name: topic.next_seq for name, topic in harness.topics.items()}
    for name in [*harness.topics, "after.crash"]:
        harness.publish(name, [harness.payload(name, rng.randint(0, 90))])
        seq = max(model.confirmed.get(name, {0: b""}))
        if name in expected and seq != expected[name]:
            problems.append(f"{name}: the next publish got seq {seq}, expected {expected[name]}")
    harness.close()
    harness.open()
    problems += harness.check(power_loss=False)
    harness.close()
    return problems


def run_crash(workload: list[Op], policy: FsyncPolicy, step: int, power_loss: bool,
              seed: int) -> Problems:
    """Stop the machine at `step`, start again, check."""
    files = SimFiles()
    files.crash_at(step)
    harness = Harness(files, policy)
    try:
        _run_workload(harness, workload)
        return None  # the workload has fewer steps
    except SimulatedCrash:
        pass
    rng = random.Random(seed)
    image = files.crashed(rng, power_loss)
    return _restart_and_check(image, harness.model, policy, power_loss, rng)


Failure = tuple[int, bool, list[str]]  # the step, whether a power loss, the problems


def run_every_crash(workload: list[Op], policy: FsyncPolicy, seed_of: Callable[[int], int],
                    power_losses: tuple[bool, ...]) -> tuple[int, Failure | None]:
    """`run_crash` at every step in one pass: before each step, the crash images of the file
    system as it is, each started and checked against a copy of the model then. The state
    and the seed (`seed_of(step)`) are those `run_crash` has at that step, so a failure
    replays as that one case. How many crash points held, and the first that did not."""
    files = SimFiles()
    harness = Harness(files, policy)
    tried = 0
    failure: Failure | None = None

    def crash_here(step: int) -> None:
        nonlocal tried, failure
        if failure is not None:
            return
        files.before_step = None  # the recovery runs on images, but not re-entrantly
        for power_loss in power_losses:
            rng = random.Random(seed_of(step))
            image = files.crashed(rng, power_loss)
            problems = _restart_and_check(image, copy.deepcopy(harness.model), policy,
                                          power_loss, rng)
            tried += 1
            if problems:
                failure = (step, power_loss, problems)
                break
        files.before_step = crash_here

    files.before_step = crash_here
    problems = _run_workload(harness, workload)
    if failure is None and problems:
        failure = (files.steps, False, problems)
    return tried, failure


def run_fault(workload: list[Op], policy: FsyncPolicy, step: int, fault: Fault,
              seed: int) -> Problems:
    """Fail `step` with `fault`; the broker goes on; check live, then after a crash."""
    files = SimFiles()
    files.fail_at(step, fault)
    harness = Harness(files, policy)
    try:
        problems = _run_workload(harness, workload)
    except StorageError as exc:
        return [f"the broker gave up: {exc}"]
    if not files.faults_hit:
        return None
    if problems:
        return problems
    files.faults.clear()  # one fault a run: the checks below read a sound disk
    harness.open()
    problems = harness.check(power_loss=False)
    harness.close()
    if problems:
        return problems
    rng = random.Random(seed)
    power_loss = policy != "never" and rng.random() < 0.5
    image = files.crashed(rng, power_loss)
    return _restart_and_check(image, harness.model, policy, power_loss, rng)


def run_flip(workload: list[Op], policy: FsyncPolicy, seed: int) -> Problems:
    """Flip one bit of a segment or an index while the broker is down: the start refuses
    it (then --repair starts), or serves around it; never a flipped record as data."""
    files = SimFiles()
    harness = Harness(files, policy)
    problems = _run_workload(harness, workload)
    if problems:
        return problems
    rng = random.Random(seed)
    where = files.flip_bit(rng, (".seg", ".idx"))
    if where is None:
        return None
    after = Harness(files, policy, harness.model)
    try:
        after.open()
    except StorageError:
        after = Harness(files, policy, harness.model)
        try:
            after.open(repair=True)
        except StorageError as exc:
            return [f"{where}: --repair cannot start: {exc}"]
    problems = [p for p in after.check(power_loss=False, holes_allowed=True)
                if "lost" not in p and "starts at" not in p]
    # A cut at the end (a torn tail, or --repair after damage in the last record) says so
    # in its log line; the records it took cannot be counted, so no GAP can name them.
    cut_at_end = any("torn" in note or "repaired" in note for note in after.notes)
    accounted = {(name, seq) for name, first, end in after.holes for seq in range(first, end)}
    for name, confirmed in harness.model.confirmed.items():
        topic = after.topics.get(name)
        if topic is None:
            problems.append(f"{where}: topic {name} is gone")
            continue
        got = after.read_all(topic)
        missing = [s for s in confirmed if s >= topic.first_seq and s not in got
                   and (name, s) not in accounted]
        if missing and not (cut_at_end and all(s >= topic.next_seq for s in missing)):
            problems.append(f"{where}: {name} seqs {missing[:5]} vanished without a GAP")
    return [f"{where}: {p}" for p in problems]


def count_steps(workload: list[Op], policy: FsyncPolicy) -> tuple[int, int]:
    """How many calls the workload makes without a crash (each a fault to try), and how
    many of them change something (each a crash point)."""
    files = SimFiles()
    changes = 0

    def count(step: int) -> None:
        nonlocal changes
        changes += 1

    files.before_step = count
    _run_workload(Harness(files, policy), workload)
    return files.steps, changes


# --- workloads -------------------------------------------------------------------------


def scripted_workloads() -> dict[str, list[Op]]:
    """Hand-written workloads that reach every kind of step: new topics, runs of every
    size, segment rolls, retention deletes, durables, restarts and --repair."""
    return {
        "rolls-and-retention": [
            Op("pub", "a", 1, 20), Op("pub", "b", 5, 30), Op("pub", "a", 3, 200),
            Op("sync"), Op("pub", "c", 1, 0), Op("pub", "a", 10, 50), Op("pub", "a", 30, 40),
            Op("durable", name="d1", topic="a"), Op("ack", "a", 5, name="d1"), Op("sync"),
            Op("pub", "b", 2, 700), Op("read"), Op("restart"), Op("read"), Op("pub", "a", 1, 1),
            Op("ack", "a", 3, name="d1"), Op("sync"), Op("pub", "e", 4, 10), Op("repair"),
            Op("pub", "e", 1, 1),
        ],
        "many-new-topics": [
            *[Op("pub", f"t{n}", 1, 16) for n in range(6)], Op("sync"),
            *[Op("pub", f"t{n}", 2, 8) for n in range(6)], Op("restart"),
            *[Op("pub", f"t{n}", 1, 8) for n in range(0, 6, 2)],
        ],
        "durables": [
            Op("pub", "t", 4, 30), Op("durable", name="x", topic="t"), Op("pub", "t", 6, 30),
            Op("ack", "t", 4, name="x"), Op("durable", name="y", topic="t"), Op("sync"),
            Op("ack", "t", 2, name="x"), Op("ack", "t", 5, name="y"), Op("pub", "t", 20, 40),
            Op("restart"), Op("read"), Op("ack", "t", 10, name="y"), Op("sync"),
        ],
    }


def random_workload(seed: int) -> list[Op]:
    """A seeded random workload of 10 to 30 operations over a few topics."""
    rng = random.Random(seed)
    topics = [f"r{n}" for n in range(rng.randint(1, 4))]
    ops: list[Op] = []
    for _ in range(rng.randint(10, 30)):
        roll = rng.random()
        topic = rng.choice(topics)
        if roll < 0.6:
            ops.append(Op("pub", topic, rng.choice((1, 1, 2, 5, 12)),
                          rng.choice((0, 10, 60, 150, 400, 900))))
        elif roll < 0.75:
            ops.append(Op("sync"))
        elif roll < 0.82:
            ops.append(Op("durable", topic, name=f"d{rng.randint(1, 2)}"))
        elif roll < 0.88:
            ops.append(Op("ack", topic, rng.randint(1, 10), name=f"d{rng.randint(1, 2)}"))
        elif roll < 0.94:
            ops.append(Op("read"))
        else:
            ops.append(Op(rng.choice(("restart", "restart", "repair"))))
    return ops


POLICIES: tuple[FsyncPolicy, ...] = ("always", "interval", "never")

