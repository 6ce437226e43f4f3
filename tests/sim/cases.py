"""The crash simulator's cases: each names one seeded run, so a failure replays exactly.

A case is a line of `key=value` words (`Case.label`), e.g.

    workload=scripted:durables kind=crash policy=interval step=57 power_loss=1 seed=3

`python -m tests.sim.soak --replay 'LABEL'` runs that one case again.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, fields
from functools import lru_cache

from broker.storage.segments import FsyncPolicy
from tests.sim.crash import (
    FAULTS,
    POLICIES,
    Op,
    Problems,
    count_steps,
    random_workload,
    run_crash,
    run_every_crash,
    run_fault,
    run_flip,
    scripted_workloads,
)


@dataclass(frozen=True)
class Case:
    workload: str  # scripted:NAME or random:SEED
    kind: str  # crash, fault or flip
    policy: FsyncPolicy
    step: int = 0
    power_loss: int = 0
    fault: int = 0  # index into FAULTS
    seed: int = 0

    @property
    def label(self) -> str:
        return " ".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self))

    @classmethod
    def parse(cls, label: str) -> Case:
        words = dict(word.split("=", 1) for word in label.split())
        return cls(words["workload"], words["kind"], words["policy"],  # type: ignore[arg-type]
                   *(int(words[f.name]) for f in fields(cls)[3:]))

    def run(self) -> Problems:
        ops = workload(self.workload)
        if self.kind == "crash":
            return run_crash(ops, self.policy, self.step, bool(self.power_loss), self.seed)
        if self.kind == "fault":
            return run_fault(ops, self.policy, self.step, FAULTS[self.fault], self.seed)
        return run_flip(ops, self.policy, self.seed)


def workload(name: str) -> list[Op]:
    kind, _, which = name.partition(":")
    return scripted_workloads()[which] if kind == "scripted" else random_workload(int(which))


@lru_cache(maxsize=4096)
def _counts(name: str, policy: FsyncPolicy) -> tuple[int, int]:
    return count_steps(workload(name), policy)


def steps_of(name: str, policy: FsyncPolicy) -> int:
    """The calls the workload makes: a fault can hit each."""
    return _counts(name, policy)[0]


def changes_of(name: str, policy: FsyncPolicy) -> int:
    """The calls that change something: a crash point before each."""
    return _counts(name, policy)[1]


def seed_for(name: str, step: int) -> int:
    """The seed of the crash at `step` of workload `name`, the same in every mode."""
    return zlib.crc32(f"{name}/{step}".encode())


def crash_sweep(name: str, policy: FsyncPolicy) -> tuple[int, Case | None, list[str]]:
    """A crash at every step of the workload: killed, and a power loss where the policy
    promises anything. How many crash points held, and the case that failed, if one did."""
    power_losses = (False, True) if policy != "never" else (False,)
    tried, failure = run_every_crash(workload(name), policy, lambda s: seed_for(name, s),
                                     power_losses)
    if failure is None:
        return tried, None, []
    step, power_loss, problems = failure
    return tried, Case(name, "crash", policy, step, int(power_loss), 0,
                       seed_for(name, step)), problems


def fault_cases(name: str, policy: FsyncPolicy, every_fault: bool) -> Iterator[Case]:
    """A fault at every step: every kind of fault, or one, taken in turn."""
    for step in range(1, steps_of(name, policy) + 1):
        for fault in range(len(FAULTS)) if every_fault else [step % len(FAULTS)]:
            yield Case(name, "fault", policy, step, 0, fault, seed_for(name, step))


def scripted_names() -> list[str]:
    return [f"scripted:{name}" for name in scripted_workloads()]


def random_faults(seed: int, count: int) -> Iterator[Case]:
    """For one seed's workload: `count` faults at random steps, and one flipped bit."""
    rng = random.Random(seed)
    name = f"random:{seed}"
    policy = random_policy(seed)
    steps = steps_of(name, policy)
    for _ in range(count):
        yield Case(name, "fault", policy, rng.randint(1, steps), 0, rng.randrange(len(FAULTS)),
                   rng.randrange(1 << 30))
    yield Case(name, "flip", policy, seed=rng.randrange(1 << 30))


def random_policy(seed: int) -> FsyncPolicy:
    return POLICIES[seed % len(POLICIES)]
