"""The live-timing producer end to end: real broker, real producer, fake F1 endpoints serving
the real recorded session, and static-archive and FastF1-format replays; counted exactly."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from broker import Client, Message
from tests.helpers import (
    ROOT,
    SESSION,
    SESSION_MESSAGES,
    Processes,
    RunningProcess,
    replay_session,
    run_command,
)

SAMPLES = ROOT / "samples" / "livetiming"
TOPICS = "SessionInfo,TimingData,SessionStatus,DriverList,TimingAppData,WeatherData," \
         "TrackStatus,RaceControlMessages"


def session_lines() -> dict[str, list[Any]]:
    """Per topic, the data of each line of the real session, read independently of our code."""
    return {path.name.removesuffix(".jsonStream"):
            [json.loads(line.lstrip("\ufeff")[12:])
             for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            for path in SESSION.glob("*.jsonStream")}


async def everything_published(address: str, count: int) -> list[Message]:
    """Every message on live.>, from the earliest retained: one announced session
    (live.session_start) and exactly `count` messages stamped with it, nothing more."""
    async with Client(address, name="checker") as client:
        sub = await client.subscribe("live.>", start="earliest")
        async with asyncio.timeout(20):
            messages = [await anext(sub) for _ in range(count + 1)]
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await anext(sub)
    (start,) = [m for m in messages if m.topic == "live.session_start"]
    messages.remove(start)
    assert {m.data["session"] for m in messages} == {start.data["session"]}
    return messages


def assert_is_the_session(messages: list[Message]) -> None:
    """Every line of every topic exactly once, in order, the first of each as a snapshot."""
    expected = session_lines()
    assert len(messages) == sum(len(lines) for lines in expected.values()) == SESSION_MESSAGES
    for topic, lines in expected.items():
        mine = [m.data for m in messages if m.topic == f"live.{topic}"]
        assert [m["data"] for m in mine] == lines, topic
        assert [m["snapshot"] for m in mine] == [True] + [False] * (len(lines) - 1), topic
        assert all(m["topic"] == topic for m in mine)
    assert all(m.gap is None for m in messages)


async def fake_f1(processes: Processes, *flags: str) -> tuple[RunningProcess, int]:
    server = await processes.command("-m", "tests.fakes.livetiming_server", "--session",
                                     str(SESSION), *flags)
    out: Path = server.out_path  # type: ignore[attr-defined]
    async with asyncio.timeout(15):
        while not out.read_text().strip():
            await asyncio.sleep(0.05)
    return server, int(out.read_text().split()[-1])


async def run_live(broker: str, port: int, *flags: str, env: dict[str, str] | None = None,
                   path: str = "signalrcore") -> tuple[int, str, str]:
    return await run_command("-m", "producer", "live", "--url",
                             f"http://127.0.0.1:{port}/{path}", "--topics", TOPICS,
                             "--timeout", "1.5", "--broker", broker, *flags, env=env,
                             timeout_s=60)


@pytest.mark.usefixtures("engine")
async def test_replay_of_the_real_session_delivers_every_message(processes: Processes) -> None:
    broker = await processes.any_broker()
    err = await replay_session(broker.address)
    assert "replay: published 17,979 messages" in err
    assert_is_the_session(await everything_published(broker.address, SESSION_MESSAGES))


async def test_replay_paces_by_session_time(processes: Processes) -> None:
    broker = await processes.broker()
    started = asyncio.get_running_loop().time()
    # TrackStatus: 7 messages from 00:14:42.451 to 01:35:43.040, at 1000x: about 4.9 s.
    code, _, err = await run_command("-m", "producer", "replay", str(SESSION), "--speed", "1000",
                                     "--broker", broker.address, timeout_s=60)
    elapsed = asyncio.get_running_loop().time() - started
    assert code == 0, err
    messages = await everything_published(broker.address, SESSION_MESSAGES)
    offsets = [m.data["offset_s"] for m in messages]
    span_s = max(offsets) - min(offsets)
    assert span_s / 1000 <= elapsed < span_s / 1000 + 10


@pytest.mark.usefixtures("engine")
async def test_replay_from_a_point_starts_with_the_state_there(processes: Processes) -> None:
    broker = await processes.any_broker()
    await replay_session(broker.address, "--as-fast-as-possible", "--from", "01:31:36")
    async with Client(broker.address) as client:
        sub = await client.subscribe("live.TrackStatus", start="earliest")
        track = [(await anext(sub)).data for _ in range(5)]
    assert track[0]["snapshot"] and track[0]["data"] == {"Status": "6", "Message": "VSCDeployed"}
    assert [t["data"]["Message"] for t in track[1:]] == ["VSCEnding", "AllClear", "Yellow", "Red"]


async def test_replay_of_a_damaged_recording_skips_and_counts(processes: Processes) -> None:
    broker = await processes.broker()
    code, _, err = await run_command("-m", "producer", "replay", str(SAMPLES / "with_errors.txt"),
                                     "--as-fast-as-possible", "--broker", broker.address)
    assert code == 0, err
    assert "published 19 messages" in err and "32 damaged lines skipped" in err
    messages = await everything_published(broker.address, 19)
    assert [m.data["timestamp"] for m in messages] == sorted(m.data["timestamp"] for m in messages)


@pytest.mark.usefixtures("engine")
@pytest.mark.parametrize("protocol", ["core", "classic"])
async def test_live_bridge_publishes_the_session_once_in_order(
        processes: Processes, protocol: str) -> None:
    broker = await processes.any_broker()
    _, port = await fake_f1(processes)
    code, _, err = await run_live(broker.address, port, "--protocol", protocol,
                                  path="signalrcore" if protocol == "core" else "signalr")
    assert code == 0, err
    assert "no data for 1.5 s: stopping" in err
    assert_is_the_session(await everything_published(broker.address, SESSION_MESSAGES))


@pytest.mark.usefixtures("engine")
async def test_live_bridge_reconnects_after_a_drop_without_loss_or_duplicates(
        processes: Processes, tmp_path: Path) -> None:
    broker = await processes.any_broker()
    _, port = await fake_f1(processes, "--drop-after", "5000")
    raw = tmp_path / "raw.txt"
    code, _, err = await run_live(broker.address, port, "--record-raw", str(raw))
    assert code == 0, err
    assert "live timing connection lost" in err and "connection 2" in err
    frames = raw.read_text().splitlines()
    assert sum('"target": "feed"' in frame for frame in frames) == SESSION_MESSAGES - 8
    assert sum('"type": 3' in frame for frame in frames) == 2  # one Subscribe answer each
    assert "8 repeated snapshots left out" in err  # the state resent on reconnect
    assert_is_the_session(await everything_published(broker.address, SESSION_MESSAGES))


async def test_live_bridge_survives_garbage_and_counts_it(processes: Processes) -> None:
    broker = await processes.broker()
    _, port = await fake_f1(processes, "--garbage")
    code, _, err = await run_live(broker.address, port)
    assert code == 0, err
    assert ("skipped 6 (1 damaged-payload, 1 feed-arguments, 1 non-text-frame, 1 not-an-object, "
            "1 not-json, 1 type-42)") in err
    assert err.count("skipping not-json") == 1
    assert_is_the_session(await everything_published(broker.address, SESSION_MESSAGES))


async def test_refused_token_exits_2_with_the_reason(processes: Processes) -> None:
    broker = await processes.broker()
    _, port = await fake_f1(processes, "--token", "paddock-pass")
    code, _, err = await run_live(broker.address, port)
    assert code == 2
    assert "refused the access token at negotiate: HTTP 401" in err
    code, _, err = await run_live(broker.address, port,
                                  env={"F1_LIVETIMING_TOKEN": "paddock-pass"})
    assert code == 0, err
    await everything_published(broker.address, SESSION_MESSAGES)


async def test_unreachable_endpoint_is_retried_then_exits_1(processes: Processes) -> None:
    broker = await processes.broker()
    code, _, err = await run_command("-m", "producer", "live", "--url",
                                     "http://127.0.0.1:1/signalrcore", "--retries", "2",
                                     "--broker", broker.address)
    assert code == 1
    assert "reconnecting in" in err
    assert "http://127.0.0.1:1/signalrcore unreachable after 2 retries" in err


async def test_a_recording_replays_to_the_same_sequence(processes: Processes,
                                                        tmp_path: Path) -> None:
    live_broker = await processes.broker()
    _, port = await fake_f1(processes, "--drop-after", "3000")
    recording = tmp_path / "session.txt"
    code, _, err = await run_live(live_broker.address, port, "--record", str(recording))
    assert code == 0, err
    assert len(recording.read_text().splitlines()) == SESSION_MESSAGES
    live = await everything_published(live_broker.address, SESSION_MESSAGES)
    replay_broker = await processes.broker()
    code, _, err = await run_command("-m", "producer", "replay", str(recording),
                                     "--as-fast-as-possible", "--broker", replay_broker.address)
    assert code == 0, err
    replayed = await everything_published(replay_broker.address, SESSION_MESSAGES)
    assert [(m.topic, m.data["data"], m.data["timestamp"]) for m in replayed] == [
        (m.topic, m.data["data"], m.data["timestamp"]) for m in live]


async def test_static_archive_lists_and_replays_a_session(processes: Processes,
                                                          tmp_path: Path) -> None:
    path = "2020/2020-08-09_70th_Anniversary_Grand_Prix/2020-08-07_Practice_2/"
    year = {"Year": 2020, "Meetings": [
        {"Name": "70th Anniversary Grand Prix", "Location": "Silverstone", "Sessions": [
            {"Name": "Practice 1", "Path": path.replace("Practice_2", "Practice_1")},
            {"Name": "Practice 2", "Path": path}]}]}
    feeds = {"Feeds": {p.name.removesuffix(".jsonStream"): {
        "KeyFramePath": p.name.replace("Stream", ""), "StreamPath": p.name}
        for p in SESSION.glob("*.jsonStream")}}

    async def index(request: web.Request) -> web.Response:
        return web.Response(body=b"\xef\xbb\xbf" + json.dumps(year).encode())

    async def session_index(request: web.Request) -> web.Response:
        return web.json_response(feeds)

    app = web.Application()
    app.router.add_get("/static/2020/Index.json", index)
    app.router.add_get(f"/static/{path}Index.json", session_index)
    app.router.add_static(f"/static/{path}", SESSION)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/static"  # type: ignore[union-attr]
    try:
        code, out, err = await run_command("-m", "producer", "archive", "--list", "2020",
                                           "--base-url", base)
        assert code == 0, err
        assert out.strip() == "70th Anniversary Grand Prix (Silverstone): Practice 1, Practice 2"
        code, _, err = await run_command("-m", "producer", "archive", "2020", "Monza",
                                         "Practice 2", "--base-url", base)
        assert code == 1 and "no meeting matches 'Monza'" in err
        broker = await processes.broker()
        code, _, err = await run_command(
            "-m", "producer", "archive", "2020", "silverstone", "Practice 2", "--base-url", base,
            "--download", str(tmp_path / "fp2"), "--as-fast-as-possible",
            "--broker", broker.address)
        assert code == 0, err
        assert_is_the_session(await everything_published(broker.address, SESSION_MESSAGES))
        assert sorted(p.name for p in (tmp_path / "fp2").iterdir()) == sorted(
            p.name for p in SESSION.glob("*.jsonStream"))
    finally:
        await runner.cleanup()


async def test_fastf1_loads_our_recording(tmp_path: Path, processes: Processes) -> None:
    fastf1_data = pytest.importorskip("fastf1.livetiming.data",
                                      reason="FastF1 is an optional, heavy test dependency")
    broker = await processes.broker()
    _, port = await fake_f1(processes)
    recording = tmp_path / "session.txt"
    # FastF1 finds the session start in the first line mentioning "SessionStatus" and
    # "Started", which it takes to be a SessionData message; the bundled session has no
    # SessionData topic, so its SessionStatus lines would trip that assumption.
    topics = TOPICS.replace(",SessionStatus", "")
    code, _, err = await run_command("-m", "producer", "live", "--url",
                                     f"http://127.0.0.1:{port}/signalrcore", "--topics", topics,
                                     "--timeout", "1.5", "--broker", broker.address,
                                     "--record", str(recording), timeout_s=60)
    assert code == 0, err
    data = fastf1_data.LiveTimingData(str(recording))
    data.load()
    expected = session_lines()
    assert data.errorcount == 0
    assert len(data.get("TimingData")) == len(expected["TimingData"])
    assert [message for _, message in data.get("TrackStatus")] == expected["TrackStatus"]


@pytest.mark.parametrize(("args", "message"), [
    (["replay", "no/such/folder"], "no such file or folder: no/such/folder"),
    (["replay", str(SESSION), "--from", "half past"], "--from 'half past' is not HH:MM:SS"),
    (["replay", str(SESSION), "--speed", "0"], "--speed 0.0 must be above 0"),
    (["replay", str(SESSION), str(SAMPLES / "with_errors.txt")],
     "give one archive folder or FastF1 files, not both"),
    (["live", "--append"], "--append needs --record FILE"),
    (["archive", "2020"], "give --list YEAR, or YEAR EVENT SESSION"),
    (["live", "--protocol", "v3"], "invalid choice: 'v3'"),
])
async def test_bad_usage_exits_2_with_a_reason(processes: Processes, args: list[str],
                                               message: str) -> None:
    broker = await processes.broker()
    code, _, err = await run_command("-m", "producer", *args, "--broker", broker.address)
    assert code == 2, err
    assert message in err


async def test_replay_loops_until_stopped(processes: Processes) -> None:
    broker = await processes.broker()
    replaying = await processes.command("-m", "producer", "replay",
                                        str(SAMPLES / "with_errors.txt"), "--as-fast-as-possible",
                                        "--loop", "--broker", broker.address)
    async with Client(broker.address) as client:  # order is kept within a topic
        sub = await client.subscribe("live.TrackStatus", start="earliest")
        rounds = [[(await anext(sub)).data["data"] for _ in range(3)] for _ in range(3)]
    assert rounds[0] == [{"Status": "1", "Message": "AllClear", "_kf": True}, {"_kf": True}, {}]
    assert rounds[0] == rounds[1] == rounds[2]
    assert await replaying.stop() == 0
    assert "replay round 2 done; starting again" in replaying.log()
