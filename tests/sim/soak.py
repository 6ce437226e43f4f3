"""`make soak`: run the crash simulator for as long as asked, and say what it explored.

    python -m tests.sim.soak --seconds 120          # the scripted sweep, then random seeds
    python -m tests.sim.soak --seeds 5000           # a number of random seeds instead
    python -m tests.sim.soak --replay 'workload=... kind=crash ...'   # one case again

The scripted sweep runs first (every step of every scripted workload: crashed,
with power loss, and failed with every kind of fault); then seeded random
workloads. A failing case stops the run and prints the command that replays it.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections import Counter
from collections.abc import Iterator

from tests.sim.cases import Case, random_cases, scripted_sweep

PROGRESS_EVERY_S = 10.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="make soak", description="Crash and fault injection against the on-disk log "
        "(docs/storage.md, 'How it is tested'). SEEDS= and SECONDS= are the make variables.")
    parser.add_argument("--seconds", type=float, default=0.0,
                        help="stop starting new random seeds after this long (default: 60 "
                             "when --seeds is not given)")
    parser.add_argument("--seeds", type=int, default=0, help="random seeds to run")
    parser.add_argument("--first-seed", type=int, default=1, help="where the seeds begin")
    parser.add_argument("--crash-points", type=int, default=40,
                        help="random crash points (and as many faults) per seed")
    parser.add_argument("--replay", metavar="LABEL", help="run one case, by its label")
    parser.add_argument("--no-sweep", action="store_true", help="skip the scripted sweep")
    args = parser.parse_args(argv)
    if args.replay:
        return _replay(args.replay)
    seconds = args.seconds or (0.0 if args.seeds else 60.0)
    deadline = time.monotonic() + seconds if seconds else None
    seeds: Iterator[int] = (range(args.first_seed, args.first_seed + args.seeds) if args.seeds
                            else itertools.count(args.first_seed))
    counts: Counter[str] = Counter()
    started = time.monotonic()
    last_report = started

    def cases() -> Iterator[Case]:
        if not args.no_sweep:
            yield from scripted_sweep(every_fault=True)
        for seed in seeds:
            if deadline is not None and time.monotonic() > deadline:
                return
            counts["seeds"] += 1
            yield from random_cases(seed, args.crash_points)

    for case in cases():
        problems = case.run()
        if problems is None:
            continue
        counts[_kind(case)] += 1
        if problems:
            print(f"FAILED: {case.label}", *(f"  {p}" for p in problems[:10]),
                  f"replay: python -m tests.sim.soak --replay '{case.label}'", sep="\n",
                  file=sys.stderr)
            _report(counts, started)
            return 1
        if time.monotonic() - last_report > PROGRESS_EVERY_S:
            last_report = time.monotonic()
            _report(counts, started)
    _report(counts, started)
    return 0


def _kind(case: Case) -> str:
    if case.kind == "crash":
        return "crash points (power loss)" if case.power_loss else "crash points (killed)"
    return "injected faults" if case.kind == "fault" else "flipped bits"


def _report(counts: Counter[str], started: float) -> None:
    crashes = counts["crash points (killed)"] + counts["crash points (power loss)"]
    print(f"soak: {time.monotonic() - started:,.0f} s: {crashes:,} crash points "
          f"({counts['crash points (power loss)']:,} with power loss), "
          f"{counts['injected faults']:,} injected faults, {counts['flipped bits']:,} flipped "
          f"bits, {counts['seeds']:,} random seeds: 0 confirmed messages lost, 0 refused "
          "served, 0 recoveries needing a human", flush=True)


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
