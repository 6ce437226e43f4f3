"""`make run`: real F1 live timing and a simulated game session, through the broker, to
a printer, a SQLite writer, an alerter and the web dashboard.

Nine processes: the broker; the live-timing replay of the 2020 70th
Anniversary GP Practice 2 (real data, at 30x: about three minutes); the game
simulator sending UDP to the game bridge (as the F1 game would); the printer
on what a person can read as it scrolls by; the SQLite writer into
data/slipstream.db; and the alerter with the shipped rules (also logging to
data/alerts.jsonl); and the dashboard, whose address it prints (open it in a
browser while the session runs). At the end, or on Ctrl-C, everything stops cleanly and it
says where the data is and what to ask it.

With SLIPSTREAM_BROKER=nats://HOST:PORT (docs/scale-out.md) the same demo runs on
a NATS JetStream server or cluster instead: no slipstream broker is started, the
stream is set up first, and every producer and consumer is pointed there.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PORT = int(os.environ.get("SLIPSTREAM_DEMO_PORT", "20778"))
NATS = os.environ.get("SLIPSTREAM_BROKER", "")
ON_NATS = NATS.lower().startswith(("nats://", "tls://"))
BROKER = NATS if ON_NATS else f"127.0.0.1:{PORT}"
SESSION = ROOT / "samples" / "livetiming" / "2020-08-07_70th-anniversary-fp2"
SPEED = os.environ.get("SLIPSTREAM_DEMO_SPEED", "30")
DATA = ROOT / "data"
DATABASE = DATA / "slipstream.db"
ALERTS = DATA / "alerts.jsonl"
BROKER_DATA = DATA / "broker"  # the broker's --data-dir: topics on disk (docs/storage.md)
READABLE = ["live.SessionInfo", "live.SessionStatus", "live.WeatherData", "live.DriverList",
            "game.event"]
GAME_PORT = int(os.environ.get("SLIPSTREAM_DEMO_GAME_PORT", "20777"))
HTTP = os.environ.get("SLIPSTREAM_DEMO_HTTP", "127.0.0.1:8080")
SPEED_TRACE = ("SELECT l.lap_distance, t.speed FROM game_lap_data l JOIN game_car_telemetry t "
               "USING (epoch, car_index, session_uid, frame) WHERE car_index = 0 AND "
               "current_lap_num = 2 ORDER BY frame")
FASTEST_LAPS = ("SELECT d.tla, l.lap_time, min(l.lap_time_s) AS s FROM live_laps l "
                "JOIN drivers d USING (racing_number) GROUP BY l.racing_number "
                "ORDER BY s LIMIT 5")


def python(*args: str, **options: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, **options)  # type: ignore[call-overload, no-any-return]


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def main() -> int:
    DATA.mkdir(exist_ok=True)
    for stale in (DATABASE, ALERTS, *DATA.glob("slipstream.db-*")):
        stale.unlink(missing_ok=True)  # each demo starts from an empty database
    if ON_NATS:
        print(f"on NATS JetStream at {BROKER}: setting up the stream ...", flush=True)
        broker = python("-m", "broker", "--broker", BROKER)  # prints the stream; exits
        if broker.wait():
            return 1  # it said why on stderr (unreachable, refused, incompatible stream)
    else:
        shutil.rmtree(BROKER_DATA, ignore_errors=True)  # ... and an empty broker log
        print(f"starting the broker on {BROKER}, keeping its log in {BROKER_DATA} ...",
              flush=True)
        broker = python("-m", "broker", "--port", str(PORT), "-q", "--data-dir",
                        str(BROKER_DATA), stdout=subprocess.PIPE)
        assert broker.stdout is not None
        if not broker.stdout.readline():
            return broker.wait() or 1  # it said why on stderr (port in use, ...)
    children = [broker]
    common = ["--from", "earliest", "--broker", BROKER]
    try:
        children += [
            python("-m", "consumer", "printer", *READABLE, *common),
            python("-m", "consumer", "sqlite", "--db", str(DATABASE), *common),
            python("-m", "consumer", "alerter", "--log", str(ALERTS), *common),
        ]
        dashboard = python("-m", "consumer", "dashboard", "--http", HTTP, *common,
                           stdout=subprocess.PIPE)
        children.append(dashboard)
        assert dashboard.stdout is not None
        address = dashboard.stdout.readline().decode().removeprefix("dashboard: ").strip()
        if address:
            print(f"\n  the dashboard: open {address} in a browser\n", flush=True)
        else:  # it said why on stderr (port in use, say); the rest of the demo goes on
            print(f"the dashboard did not start (SLIPSTREAM_DEMO_HTTP={HTTP} picks another "
                  "address)", file=sys.stderr, flush=True)
        bridge = python("-m", "producer", "udp", "--listen", f"127.0.0.1:{GAME_PORT}",
                        "--broker", BROKER, "-q", stdout=subprocess.PIPE)
        children.append(bridge)
        assert bridge.stdout is not None
        bridge.stdout.readline()  # listening: the simulator may start
        children.append(python("-m", "producer", "udp-sim", "--to", f"127.0.0.1:{GAME_PORT}",
                               "--hz", "20", "--duration", str(round(6200 / float(SPEED))),
                               "-q"))
        print(f"replaying {SESSION.name} at {SPEED}x and a simulated game session "
              "(Ctrl-C stops) ...\n", flush=True)
        replay = python("-m", "producer", "replay", str(SESSION), "--speed", SPEED,
                        "--broker", BROKER)
        children.append(replay)
        replay.wait()
        print("\nwhat the broker saw:\n", flush=True)
        subprocess.run([sys.executable, "-m", "broker", "stats", "--broker", BROKER], cwd=ROOT)
    except KeyboardInterrupt:
        print("\nCtrl-C: stopping ...", file=sys.stderr)
    finally:
        # Consumers and producer first, so they finish with the broker still there.
        stop([child for child in children if child is not broker])
        stop([broker])
    print(f"\nall stopped. The session is in {DATABASE.relative_to(ROOT)}, the alerts in "
          f"{ALERTS.relative_to(ROOT)}. Fastest laps, with any SQLite tool:\n"
          f"  sqlite3 {DATABASE.relative_to(ROOT)} "
          f"\"{FASTEST_LAPS}\"\nThe game car's speed over its second lap:\n  sqlite3 "
          f"{DATABASE.relative_to(ROOT)} \"{SPEED_TRACE}\"\nMore queries: docs/sqlite.md\n"
          f"The dashboard on its own: python -m consumer dashboard (docs/dashboard.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
