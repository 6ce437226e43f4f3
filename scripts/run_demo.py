"""`make run`: real F1 live timing and a simulated game session, through the broker, to
a printer, a SQLite writer, an alerter and the web dashboard.

Ten processes: the broker; the live-timing replay of the 2020 70th
Anniversary GP Practice 2 (real data, at 30x: about three minutes); the game
simulator sending UDP to the game bridge (as the F1 game would); the printer
on what a person can read as it scrolls by; the SQLite writer; the alerter
with the shipped rules; the dashboard and the standings of the game's laps,
whose addresses it prints (open them in a browser while the session runs).
At the end, or on Ctrl-C, everything stops cleanly and it says where the
data is and what to ask it.

Each run keeps its data in a directory of its own, data/run-YYYYMMDD-HHMMSS/
(the database, the alerts, the broker's log), so a second run replaces
nothing. A port already in use (another demo, another broker) is replaced by
a free one, and the demo says so; SLIPSTREAM_DEMO_PORT, _WS_PORT, _HTTP and _GAME_PORT
choose them.

With SLIPSTREAM_BROKER=nats://HOST:PORT (docs/scale-out.md) the same demo runs on
a NATS JetStream server or cluster instead: no slipstream broker is started, the
stream is set up first, and every producer and consumer is pointed there.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Pages that may use the demo's broker over WebSocket: examples/web/ served on port 8000.
WEB_ORIGINS = ("http://localhost:8000", "http://127.0.0.1:8000")


def free(port: int, kind: int = socket.SOCK_STREAM) -> bool:
    """Whether `port` on loopback can be bound (TCP, or UDP with SOCK_DGRAM)."""
    with socket.socket(socket.AF_INET, kind) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def choose_port(variable: str, default: int, what: str,
                kind: int = socket.SOCK_STREAM) -> int:
    """`variable` if set; else `default`, or 0 (a free one) when `default` is taken."""
    if variable in os.environ:
        return int(os.environ[variable].rsplit(":", 1)[-1])
    if free(default, kind):
        return default
    print(f"port {default} ({what}) is in use: using a free one instead "
          f"({variable} chooses)", flush=True)
    return 0


NATS = os.environ.get("SLIPSTREAM_BROKER", "")
ON_NATS = NATS.lower().startswith("nats://")
SESSION = ROOT / "samples" / "livetiming" / "2020-08-07_70th-anniversary-fp2"
SPEED = os.environ.get("SLIPSTREAM_DEMO_SPEED", "30")
RUN = ROOT / "data" / time.strftime("run-%Y%m%d-%H%M%S")  # this run's data, kept
DATABASE = RUN / "slipstream.db"
ALERTS = RUN / "alerts.jsonl"
EXPORTS = RUN / "exports"  # the standings' CSV exports
BROKER_DATA = RUN / "broker"  # the broker's --data-dir: topics on disk (docs/storage.md)
READABLE = ["live.session_start", "live.SessionInfo", "live.SessionStatus", "live.WeatherData",
            "live.DriverList", "game.event", "laps.>"]  # laps.>: each lap time as it is set
SPEED_TRACE = ("SELECT l.lap_distance, t.speed FROM game_lap_data l JOIN game_car_telemetry t "
               "USING (epoch, rig, car_index, session_uid, frame) WHERE car_index = 0 AND "
               "current_lap_num = 2 ORDER BY frame")
FASTEST_LAPS = ("SELECT d.tla, l.lap_time, min(l.lap_time_s) AS s FROM live_laps l "
                "JOIN drivers d USING (racing_number) GROUP BY l.racing_number "
                "ORDER BY s LIMIT 5")


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# The processes share one terminal: a progress bar would be torn up by the others' lines.
CHILD_ENV = {**os.environ, "SLIPSTREAM_PROGRESS": "0"}
# On NATS each run gets a stream of its own (a stream outlives the run, and consumers
# reading from earliest would replay the runs before: three RED FLAGs in the first
# second), unless SLIPSTREAM_STREAM names one. docs/scale-out.md says how to remove them.
STREAM = os.environ.get("SLIPSTREAM_STREAM") or time.strftime("DEMO_%Y%m%d_%H%M%S")
if ON_NATS:
    CHILD_ENV["SLIPSTREAM_STREAM"] = STREAM


def python(*args: str, **options: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=CHILD_ENV, **options)  # type: ignore[call-overload, no-any-return]


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
    RUN.mkdir(parents=True, exist_ok=True)
    print(f"this run's data goes to {RUN.relative_to(ROOT)}/ (earlier runs are kept beside "
          "it; delete data/ when done)", flush=True)
    if ON_NATS:
        broker_address = NATS
        print(f"on NATS JetStream at {NATS}: setting up this run's stream {STREAM} (earlier "
              "runs' streams are kept: docs/scale-out.md says how to remove them) ...",
              flush=True)
        broker = python("-m", "broker", "--broker", NATS)  # prints the stream; exits
        if broker.wait():
            return 1  # it said why on stderr (unreachable, refused, incompatible stream)
    else:
        port = choose_port("SLIPSTREAM_DEMO_PORT", 20778, "the broker")
        # The same protocol over WebSocket, for web pages: examples/web/ served on :8000.
        ws_port = choose_port("SLIPSTREAM_DEMO_WS_PORT", 20779, "the broker's WebSocket")
        broker = python("-m", "broker", "--port", str(port), "-q", "--data-dir",
                        str(BROKER_DATA), "--ws", str(ws_port),
                        *(flag for origin in WEB_ORIGINS for flag in ("--ws-allow-origin",
                                                                     origin)),
                        stdout=subprocess.PIPE)
        assert broker.stdout is not None
        line = broker.stdout.readline().decode()
        if not line:
            return broker.wait() or 1  # it said why on stderr
        broker_address = "127.0.0.1:" + line.rsplit(":", 1)[1].strip()
        ws_url = broker.stdout.readline().decode().split("websocket on ", 1)[-1].strip()
        print(f"the broker is on {broker_address}, keeping its log in "
              f"{BROKER_DATA.relative_to(ROOT)}/; web pages reach it at {ws_url} (to see one: "
              "python3 -m http.server 8000, then open http://localhost:8000/examples/web/"
              + ("" if ws_url.endswith(":20779/") else f"?broker={ws_url}") + ")",
              flush=True)
    children = [broker]
    common = ["--from", "earliest", "--broker", broker_address, "-q"]
    http = os.environ.get("SLIPSTREAM_DEMO_HTTP") or (
        f"127.0.0.1:{choose_port('SLIPSTREAM_DEMO_HTTP', 8080, 'the dashboard')}")
    game_port = choose_port("SLIPSTREAM_DEMO_GAME_PORT", 20777, "the game's UDP",
                            socket.SOCK_DGRAM) or free_udp_port()
    try:
        children += [
            python("-m", "consumer", "printer", *READABLE, *common),
            python("-m", "consumer", "sqlite", "--db", str(DATABASE), *common),
            python("-m", "consumer", "alerter", "--log", str(ALERTS), *common),
        ]
        dashboard = python("-m", "consumer", "dashboard", "--http", http, "--game-label",
                           "Simulated F1 game", *common, stdout=subprocess.PIPE)
        standings_http = os.environ.get("SLIPSTREAM_DEMO_STANDINGS") or (
            f"127.0.0.1:{choose_port('SLIPSTREAM_DEMO_STANDINGS', 8081, 'the standings')}")
        standings = python("-m", "consumer", "standings", "--http", standings_http,
                           "--export-dir", str(EXPORTS), *common, stdout=subprocess.PIPE)
        children += [dashboard, standings]
        print(flush=True)
        for process, what, variable, address in (
                (dashboard, "the dashboard", "SLIPSTREAM_DEMO_HTTP", http),
                (standings, "the standings (game laps, with points)",
                 "SLIPSTREAM_DEMO_STANDINGS", standings_http)):
            assert process.stdout is not None
            line = process.stdout.readline().decode().split(": ", 1)[-1].strip()
            if line:
                print(f"  {what}: open {line}", flush=True)
            else:  # it said why on stderr (port in use, say); the rest of the demo goes on
                print(f"{what} did not start ({variable}={address} picks another "
                      "address)", file=sys.stderr, flush=True)
        print(flush=True)
        bridge = python("-m", "producer", "udp", "--listen", f"127.0.0.1:{game_port}",
                        "--broker", broker_address, "-q", stdout=subprocess.PIPE)
        children.append(bridge)
        assert bridge.stdout is not None
        bridge.stdout.readline()  # listening: the simulator may start
        children.append(python("-m", "producer", "udp-sim", "--to", f"127.0.0.1:{game_port}",
                               "--hz", "20", "--duration", str(round(6200 / float(SPEED))),
                               "-q"))
        print(f"replaying {SESSION.name} at {SPEED}x and a simulated game session "
              "(Ctrl-C stops) ...\n", flush=True)
        replay = python("-m", "producer", "replay", str(SESSION), "--speed", SPEED,
                        "--broker", broker_address)
        children.append(replay)
        replay.wait()
        print("\nwhat the broker saw:\n", flush=True)
        subprocess.run([sys.executable, "-m", "broker", "stats", "--broker", broker_address],
                       cwd=ROOT)
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
          f"The dashboard on its own: slipstream consumer dashboard (docs/dashboard.md)\n"
          f"The standings: slipstream consumer standings (docs/standings.md); exports go to "
          f"{EXPORTS.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
