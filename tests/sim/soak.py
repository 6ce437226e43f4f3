"""`make soak`: run the crash simulator for as long as asked, and say what it explored.

    python -m tests.sim.soak --seconds 120          # the scripted sweep, then random seeds
    python -m tests.sim.soak --seeds 5000           # a number of random seeds instead
    python -m tests.sim.soak --replay 'workload=... kind=crash ...'   # one case again

The scripted sweep runs first: every step of every scripted workload under
every --fsync policy, crashed (killed, and with a power loss) and failed with
every kind of fault. Then seeded random workloads, each crashed at every step
and failed at random steps, with one flipped bit. A failing case stops the run
and prints the command that replays it.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections import Counter
from collections.abc import Iterator

from tests.sim.cases import (
    Case,
    crash_sweep,
    fault_cases,
    random_faults,
    random_policy,
    scripted_names,
)
from tests.sim.crash import POLICIES

PROGRESS_EVERY_S = 10.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.sim.soak",
        description="Crash and fault injection against the on-disk log (docs/storage.md, "
                    "'How it is tested'). `make soak SECONDS=... SEEDS=...` runs this.")
    parser.add_argument("--seconds", type=float, default=0.0,
                        help="start no new random seed after this long (default: 60 when "
                             "--seeds is not given)")
    parser.add_argument("--seeds", type=int, default=0, help="random seeds to run")
    parser.add_argument("--first-seed", type=int, default=1, help="where the seeds begin")
    parser.add_argument("--faults-per-seed", type=int, default=40,
                        help="faults injected at random steps of each random workload")
    parser.add_argument("--replay", metavar="LABEL", help="run one case again, by its label")
    parser.add_argument("--no-sweep", action="store_true", help="skip the scripted sweep")
    args = parser.parse_args(argv)
    if args.replay:
        return _replay(args.replay)
    seconds = args.seconds or (0.0 if args.seeds else 60.0)
    soak = Soak(time.monotonic() + seconds if seconds else None)
    seeds: Iterator[int] = (iter(range(args.first_seed, args.first_seed + args.seeds))
                            if args.seeds else itertools.count(args.first_seed))
    ok = True
    if not args.no_sweep:
        for name in scripted_names():
            for policy in POLICIES:
                ok = ok and soak.crashes(name, policy)
                ok = ok and all(soak.case(c) for c in fault_cases(name, policy, True))
    for seed in seeds:
        if not ok or soak.out_of_time():
            break
        soak.counts["random seeds"] += 1
        name = f"random:{seed}"
        ok = soak.crashes(name, random_policy(seed))
        ok = ok and all(soak.case(c) for c in random_faults(seed, args.faults_per_seed))
    soak.report(final=True, failed=not ok)
    return 0 if ok else 1


class Soak:
    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline
        self.counts: Counter[str] = Counter()
        self.started = self.last_report = time.monotonic()

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    def crashes(self, name: str, policy: str) -> bool:
        tried, failed, problems = crash_sweep(name, policy)  # type: ignore[arg-type]
        self.counts["crash points"] += tried
        return self._outcome(failed, problems)

    def case(self, case: Case) -> bool:
        problems = case.run()
        if problems is None:
            return True
        self.counts["injected faults" if case.kind == "fault" else "flipped bits"] += 1
        return self._outcome(case if problems else None, problems)

    def _outcome(self, failed: Case | None, problems: list[str]) -> bool:
        if failed is not None:
            print(f"FAILED: {failed.label}", *(f"  {p}" for p in problems[:10]),
                  f"replay it: python -m tests.sim.soak --replay '{failed.label}'",
                  sep="\n", file=sys.stderr)
            return False
        if time.monotonic() - self.last_report > PROGRESS_EVERY_S:
            self.last_report = time.monotonic()
            self.report()
        return True

    def report(self, final: bool = False, failed: bool = False) -> None:
        counts = self.counts
        line = (f"soak: {time.monotonic() - self.started:,.0f} s: "
                f"{counts['crash points']:,} crash points, "
                f"{counts['injected faults']:,} injected faults, "
                f"{counts['flipped bits']:,} flipped bits, {counts['random seeds']:,} random "
                "seeds")
        if final:
            line += (": FAILED (above)" if failed else ": 0 confirmed messages lost, 0 refused "
                     "messages served, 0 recoveries needing a human")
        print(line, flush=True)


def _replay(label: str) -> int:
    case = Case.parse(label)
    problems = case.run()
    if problems is None:
        print(f"{label}: not reached (the workload has no such step or call)")
        return 0
    for problem in problems:
        print(problem)
    print(f"{label}: {'FAILED' if problems else 'held'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
