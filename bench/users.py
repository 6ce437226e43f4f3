"""`make bench` (users): does a users file cost the hot path? W1 side by side.

W1 (1 producer -> 1 consumer, 200,000 x 200 B) on a broker without users and
on one with a users file of 100 users, the clients logged in as one whose
publish and subscribe rules have a deny pattern (so each PUB's topic is
checked, from the rules' cache), run by run in turn and each first in turn, so
the machine's drift hits both alike. The goal (issue 24): within 5%.

    python bench/users.py [--runs N]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import w1_side_by_side

from broker.users.passwords import hash_password

USERS = 100


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
        await w1_side_by_side(
            f"W1 with a users file of {USERS} users, beside none", args.runs,
            ("no users", {"broker_flags": []}),
            (f"{USERS} users", {"broker_flags": ["--users", str(users)], "client_env": {
                "SLIPSTREAM_USER": "bench", "SLIPSTREAM_PASSWORD": "bench-pw"}}),
            "at least 0.95")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
