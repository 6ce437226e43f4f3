"""`make bench` (users): does a users file cost the hot path? W1 side by side.

W1 (1 producer -> 1 consumer, 200,000 x 200 B) on a broker without users and
on one with a users file of 100 users, the clients logged in as one whose
publish and subscribe rules have a deny pattern (so each PUB's topic is
checked, from the rules' cache), run by run in turn so the machine's drift hits
both alike. The goal (issue 24): within 5%.

    python bench/users.py [--runs N]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import Result, run_workload, spread

from broker.users.passwords import hash_password

USERS = 100
W1 = dict(consumers=1, count=200_000, rate=0.0, latency=False)


def users_file(directory: Path) -> Path:
    """100 users, each with its own topics; `bench` publishes and reads bench.>."""
    lines = []
    for index in range(USERS - 1):
        lines += [f"[users.rig{index}]", f'password = "{hash_password(f"pw{index}")}"',
                  f'publish = ["game.rig{index}.>"]', 'subscribe = ["game.>", "live.>"]', ""]
    lines += ["[users.bench]", f'password = "{hash_password("bench-pw")}"',
              'publish = { allow = ["bench.>"], deny = ["bench.private.>"] }',
              'subscribe = { allow = ["bench.>"], deny = ["bench.private.>"] }', ""]
    path = directory / "users.toml"
    path.write_text("\n".join(lines))
    return path


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        users = users_file(Path(directory))
        plain: list[Result] = []
        with_users: list[Result] = []
        for _ in range(args.runs):
            plain.append(await run_workload(broker_flags=[], **W1))  # type: ignore[arg-type]
            with_users.append(await run_workload(
                broker_flags=["--users", str(users)],
                client_env={"SLIPSTREAM_USER": "bench", "SLIPSTREAM_PASSWORD": "bench-pw"},
                **W1))  # type: ignore[arg-type]
    ratio = statistics.median(r.rate for r in with_users) / statistics.median(
        r.rate for r in plain)
    print(f"\nW1 with a users file of {USERS} users, beside none ({args.runs} runs each, "
          "interleaved; median [min..max] msgs/s at the consumer)\n")
    print("| broker | W1 msgs/s | lost |")
    print("|---|---:|---:|")
    print(f"| no users | {spread([r.rate for r in plain])} | {sum(r.lost for r in plain)} |")
    print(f"| {USERS} users | {spread([r.rate for r in with_users])} | "
          f"{sum(r.lost for r in with_users)} |")
    print(f"\nwith users / without: {ratio:.3f} (goal: at least 0.95)")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
