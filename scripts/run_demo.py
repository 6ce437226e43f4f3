"""`make run`: the real bundled F1 session, replayed through the broker to a printer.

Three processes: the broker, the live-timing replay of the 2020 70th
Anniversary GP Practice 2 (real data, at 30x: about three minutes), and a
printer on the topics a person can read as they scroll by. At the end (or on
Ctrl-C) it prints the broker's statistics and stops everything cleanly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PORT = int(os.environ.get("SLIPSTREAM_DEMO_PORT", "20778"))
BROKER = f"127.0.0.1:{PORT}"
SESSION = ROOT / "samples" / "livetiming" / "2020-08-07_70th-anniversary-fp2"
SPEED = os.environ.get("SLIPSTREAM_DEMO_SPEED", "30")
READABLE = ["live.SessionInfo", "live.SessionStatus", "live.TrackStatus",
            "live.RaceControlMessages", "live.WeatherData"]


def python(*args: str, **options: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, **options)  # type: ignore[call-overload, no-any-return]


def main() -> int:
    print(f"starting the broker on {BROKER} ...", flush=True)
    broker = python("-m", "broker", "--port", str(PORT), "-q", stdout=subprocess.PIPE)
    assert broker.stdout is not None
    if not broker.stdout.readline():
        return broker.wait() or 1  # it said why on stderr (port in use, ...)
    children = [broker]
    try:
        children.append(python("-m", "consumer", "printer", *READABLE, "--from", "earliest",
                               "--broker", BROKER))
        print(f"replaying {SESSION.name} at {SPEED}x (Ctrl-C stops) ...\n", flush=True)
        replay = python("-m", "producer", "replay", str(SESSION), "--speed", SPEED,
                        "--broker", BROKER)
        children.append(replay)
        replay.wait()
        print("\nwhat the broker saw:\n", flush=True)
        subprocess.run([sys.executable, "-m", "broker", "stats", "--broker", BROKER], cwd=ROOT)
    except KeyboardInterrupt:
        print("\nCtrl-C: stopping ...", file=sys.stderr)
    finally:
        for child in reversed(children):
            if child.poll() is None:
                child.send_signal(signal.SIGINT)
        for child in children:
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
    print("\nall stopped. Next: python -m consumer printer 'live.>' --from earliest while "
          "python -m producer replay", SESSION.relative_to(ROOT), "runs (see README.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
