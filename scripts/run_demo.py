"""`make run`: a broker, a publisher and a printer, three processes, data visibly flowing.

It runs for about ten seconds, prints the broker's stats and stops everything;
Ctrl-C stops it all early, cleanly. (The producer and consumer issues replace
the synthetic publisher with the bundled F1 recordings.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PORT = int(os.environ.get("SLIPSTREAM_DEMO_PORT", "20778"))
BROKER = f"127.0.0.1:{PORT}"
MESSAGES = 200


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
        printer = python("-m", "consumer", "printer", "demo.>", "--count", str(MESSAGES),
                         "--broker", BROKER)
        children.append(printer)
        time.sleep(0.5)  # let the printer subscribe before the first message
        children.append(python("-m", "producer", "pub", "demo.counter", "--count",
                               str(MESSAGES), "--rate", "20", "--size", "48",
                               "--broker", BROKER))
        printer.wait()
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
    print("\nall stopped. Try it by hand: python -m broker, then python -m consumer printer "
          "'demo.>' and python -m producer pub demo.hello '{\"lap\": 1}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
