"""`make soak`: run both simulators for as long as asked, and say what they explored.

    python -m tests.sim.soak --seconds 120          # the scripted sweep, then random seeds
    python -m tests.sim.soak --seeds 5000           # a number of random seeds instead
    python -m tests.sim.soak --jobs 2 --seconds 600 # one process per core
    python -m tests.sim.soak --replay 'workload=... kind=crash ...'   # one case again

The scripted sweep runs first: every step of every scripted workload under
every --fsync policy, crashed (killed, and with a power loss) and failed with
every kind of fault. Then seeds, each twice over: a random storage workload,
crashed at every step and failed at random steps, with one flipped bit; and a
run of the whole broker under tests/sim/broker_sim.py (clients, a virtual
clock, crashes), its invariants checked after every round. A failing case stops
the run and prints the command that replays it.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from tests.sim.broker_sim import Scenario, Violation, run_scenario
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
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="processes, each taking every JOBS-th seed (default: one per "
                             "core); the first also runs the scripted sweep")
    args = parser.parse_args(argv)
    if args.replay:
        return _replay(args.replay)
    seconds = args.seconds or (0.0 if args.seeds else 60.0)
    deadline = time.time() + seconds if seconds else None
    jobs = max(1, args.jobs)
    plans = [Plan(job, jobs, args.first_seed, args.seeds, args.faults_per_seed,
                  sweep=job == 0 and not args.no_sweep, deadline=deadline)
             for job in range(jobs)]
    started = time.monotonic()
    if jobs == 1:
        results = [run_plan(plans[0])]
    else:
        # Ctrl-C reaches every process: each job stops at once and returns what it counted
        # (run_plan); this one waits for them and reports the totals.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with ProcessPoolExecutor(jobs) as pool:
            results = list(pool.map(run_plan, plans))
    totals: Counter[str] = sum((counts for counts, _ in results), Counter())
    failed = any(not ok for _, ok in results)
    Soak(None, "", totals, started).report(final=True, failed=failed)
    return 1 if failed else 0


@dataclass(frozen=True)
class Plan:
    """What one soak process runs: seeds first+job, first+job+jobs, ... (and the sweep)."""

    job: int
    jobs: int
    first_seed: int
    seeds: int  # in all, over every job (0: until the deadline)
    faults_per_seed: int
    sweep: bool
    deadline: float | None  # time.time(), shared by the processes


def run_plan(plan: Plan) -> tuple[Counter[str], bool]:
    # The simulated broker logs what a real one would (gaps, refusals): thousands of lines.
    logging.getLogger("slipstream").setLevel(logging.CRITICAL)
    name = f"job {plan.job + 1}/{plan.jobs}: " if plan.jobs > 1 else ""
    soak = Soak(plan.deadline, name)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return soak.counts, _run(plan, soak)
    except KeyboardInterrupt:
        soak.counts["interrupted"] = 1
        return soak.counts, True
    finally:
        if plan.jobs > 1:  # a pool process waits for more work: Ctrl-C is not for it now
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run(plan: Plan, soak: Soak) -> bool:
    ok = True
    if plan.sweep:
        for workload_name in scripted_names():
            for policy in POLICIES:
                ok = ok and soak.crashes(workload_name, policy)
                ok = ok and all(soak.case(c) for c in fault_cases(workload_name, policy, True))
    last = plan.first_seed + plan.seeds if plan.seeds else None
    seeds: Iterator[int] = itertools.count(plan.first_seed + plan.job, plan.jobs)
    for seed in seeds:
        if not ok or soak.out_of_time() or (last is not None and seed >= last):
            break
        soak.counts["random seeds"] += 1
        ok = soak.crashes(f"random:{seed}", random_policy(seed))
        ok = ok and all(soak.case(c) for c in random_faults(seed, plan.faults_per_seed))
        ok = ok and soak.broker(Scenario.of(seed))
    return ok


class Soak:
    def __init__(self, deadline: float | None, name: str,
                 counts: Counter[str] | None = None, started: float | None = None) -> None:
        self.deadline = deadline
        self.name = name
        self.counts: Counter[str] = counts if counts is not None else Counter()
        self.started = self.last_report = started if started is not None else time.monotonic()

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.time() > self.deadline

    def crashes(self, name: str, policy: str) -> bool:
        tried, failed, problems = crash_sweep(name, policy)  # type: ignore[arg-type]
        self.counts["crash points"] += tried
        return self._outcome(failed, problems)

    def broker(self, scenario: Scenario) -> bool:
        try:
            sim = run_scenario(scenario)
        except Violation as exc:
            print(f"FAILED: {exc}", file=sys.stderr)
            return False
        self.counts["broker seeds"] += 1
        self.counts["broker rounds"] += sim.steps_run
        self.counts["broker messages"] += sum(t.published_total for t in sim.core.topics.values())
        self.counts["broker restarts"] += sim.restarts
        self.counts["broker gaps"] += sim.gaps
        return self._outcome(None, [])

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
        line = (f"soak: {self.name}{time.monotonic() - self.started:,.0f} s: "
                f"{counts['crash points']:,} crash points, "
                f"{counts['injected faults']:,} injected faults, "
                f"{counts['flipped bits']:,} flipped bits, {counts['random seeds']:,} random "
                f"seeds; the whole broker: {counts['broker seeds']:,} seeds, "
                f"{counts['broker rounds']:,} rounds checked, "
                f"{counts['broker messages']:,} messages, {counts['broker restarts']:,} "
                f"restarts, {counts['broker gaps']:,} gaps counted exactly")
        if final:
            line += " (interrupted)" if counts["interrupted"] else ""
            line += (": FAILED (above)" if failed else ": 0 confirmed messages lost, 0 refused "
                     "messages served, 0 recoveries needing a human, 0 broken invariants")
        print(line, flush=True)


def _replay(label: str) -> int:
    if label.startswith("broker "):
        try:
            run_scenario(Scenario.parse(label))
        except Violation as exc:
            print(exc)
            print(f"{label}: FAILED")
            return 1
        print(f"{label}: held")
        return 0
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
