"""The crash simulator's cases: each names one seeded run, so a failure replays exactly.

A case is a line of `key=value` words (`Case.label`), e.g.

    workload=scripted:durables kind=crash policy=interval step=57 power_loss=1 seed=3

`python -m tests.sim.soak --replay 'LABEL'` runs that one case again.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, fields
from functools import lru_cache

from broker.segments import FsyncPolicy
from tests.sim.crash import (
    FAULTS,
    POLICIES,
    Op,
    Problems,
    count_steps,
    random_workload,
    run_crash,
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
def steps_of(name: str, policy: FsyncPolicy) -> int:
    return count_steps(workload(name), policy)


def every_step(name: str, policy: FsyncPolicy, every_fault: bool) -> Iterator[Case]:
    """A crash at every step (killed, and a power loss where the policy promises anything),
    and a fault at every step: every kind of fault, or one, taken in turn."""
    for step in range(1, steps_of(name, policy) + 1):
        yield Case(name, "crash", policy, step, 0, 0, step)
        if policy != "never":
            yield Case(name, "crash", policy, step, 1, 0, step)
        for fault in range(len(FAULTS)) if every_fault else [step % len(FAULTS)]:
            yield Case(name, "fault", policy, step, 0, fault, step)


def scripted_sweep(every_fault: bool) -> Iterator[Case]:
    for name in scripted_workloads():
        for policy in POLICIES:
            yield from every_step(f"scripted:{name}", policy, every_fault)


def random_cases(seed: int, crash_points: int) -> Iterator[Case]:
    """For one seed: its random workload under one policy, crashed at `crash_points` random
    steps (power loss or not), failed at as many, and one flipped bit."""
    rng = random.Random(seed)
    name = f"random:{seed}"
    policy = POLICIES[seed % len(POLICIES)]
    steps = steps_of(name, policy)
    for _ in range(crash_points):
        power_loss = int(policy != "never" and rng.random() < 0.6)
        yield Case(name, "crash", policy, rng.randint(1, steps), power_loss, 0,
                   rng.randrange(1 << 30))
        yield Case(name, "fault", policy, rng.randint(1, steps), 0, rng.randrange(len(FAULTS)),
                   rng.randrange(1 << 30))
    yield Case(name, "flip", policy, seed=rng.randrange(1 << 30))
