"""Users on a real broker (issue 24): the standings only their user may write, shares that
keep one user's junk from locking the others out, a reload on SIGHUP, `slipstream passwd`,
and the command line's --user; every process real, on loopback."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp
import pytest

from broker import BrokerError, Client, ConnectError, HandshakeRefusedError
from broker.errors import ConnectionLostError
from broker.users.passwords import hash_password
from tests.helpers import (
    Processes,
    RunningBroker,
    free_port,
    nats_address,
    run_command,
    wait_for,
)
from tests.integration.test_monitoring import get, samples
from tests.integration.test_standings import admin, view

CHEAP = (16, 1, 1)  # the broker checks at the cost the hash names: cheap for most tests
# Made once: a hash made again has a new salt, which a reload takes as a new credential.
HASHES = {user: hash_password(f"{user}-pw", CHEAP) for user in ("standings", "fan", "junk")}

EVENT = """
anonymous = "screen"

[users.standings]
password = "{standings}"
publish = ["standings.>"]
subscribe = ["standings.>", "game.>", "live.>"]

[users.fan]
password = "{fan}"
publish = ["chat.>"]
subscribe = ["chat.>", "standings.>"]

[users.junk]
password = "{junk}"
publish = [">"]
subscribe = [">"]

[users.screen]
subscribe = {{ allow = [">"], deny = ["chat.>"] }}
"""


def event_file(tmp_path: Path, text: str = EVENT, name: str = "users.toml") -> Path:
    path = tmp_path / name
    path.write_text(text.format(**HASHES))
    return path


def as_user(broker: RunningBroker, user: str | None, **options: object) -> Client:
    return Client(broker.address, name=user or "stranger", user=user,
                  password=f"{user}-pw" if user else None, **options)  # type: ignore[arg-type]


async def test_only_the_standings_user_may_write_the_standings(
        processes: Processes, tmp_path: Path) -> None:
    """The forgery of issue 24 (a track, a formula for a name, a 1 ms lap, all from a plain
    client) is refused by the broker, counted per user, and the standings never see it."""
    broker = await processes.broker("--users", str(event_file(tmp_path)), "--http",
                                    "127.0.0.1:0")
    standings = await processes.standings(
        broker.address, "--user", "standings", "--password", "standings-pw", "--token",
        "s3cret", "--source", "manual", "--export-dir", str(tmp_path / "exports"))
    assert (await admin(standings, "track", {"track": "Monza"}))[0] == 200
    async with as_user(broker, "fan") as fan, as_user(broker, None) as stranger:
        for client in (fan, stranger):
            for topic, data in (("standings.track", {"track": "Hacked GP"}),
                                ("standings.driver", {"id": "d1", "name": "=HYPERLINK(1)"})):
                with pytest.raises(BrokerError) as refused:
                    await client.publish(topic, data, confirm=True)
                assert refused.value.code == "permission_denied"
                assert f"may not publish to {topic!r}" in refused.value.text
        await fan.publish("chat.hello", {"text": "hi"}, confirm=True)  # its own topics: fine
    assert (await view(standings))["track"] == "Monza"
    _, text = await get(broker.http_url + "metrics")
    figures = samples(text)
    assert figures[("slipstream_user_refusals_total",
                    (("code", "permission_denied"), ("user", "fan")))] == 2
    assert figures[("slipstream_user_refusals_total",
                    (("code", "permission_denied"), ("user", "screen")))] == 2
    assert figures[("slipstream_user_published_total", (("user", "fan"),))] == 1
    assert "anonymous user publish" not in standings.log()
    assert "without a token or a user" not in standings.log()


async def test_the_standings_warn_when_the_anonymous_user_may_publish_them(
        processes: Processes, tmp_path: Path) -> None:
    users = event_file(tmp_path, EVENT.replace('deny = ["chat.>"] }}',
                                               'deny = ["chat.>"] }}\npublish = [">"]'))
    broker = await processes.broker("--users", str(users))
    standings = await processes.standings(
        broker.address, "--user", "standings", "--password", "standings-pw", "--source",
        "manual", "--export-dir", str(tmp_path / "exports"))
    await wait_for(lambda: "lets its anonymous user publish standings" in standings.log(),
                   "the standings' warning")


async def test_one_user_s_junk_topics_and_durables_leave_the_others_their_share(
        processes: Processes, tmp_path: Path) -> None:
    """Issue 24's "first come takes all": with 4 users and --max-topics 40, junk gets 10
    topics and 10 durables; everyone else still gets theirs."""
    broker = await processes.broker("--users", str(event_file(tmp_path)), "--max-topics",
                                    "40", "--max-durables", "40")
    async with as_user(broker, "junk") as junk:
        refused = []
        for i in range(15):
            try:
                await junk.publish(f"junk.{i}", b"x", confirm=True)
            except BrokerError as exc:
                refused.append((i, exc.code))
        assert refused == [(i, "too_many_topics") for i in range(10, 15)]
        durables_refused = []
        for i in range(12):
            try:
                await junk.subscribe("junk.>", durable=f"d{i}")
            except BrokerError as exc:
                durables_refused.append((i, exc.code))
        assert durables_refused == [(10, "too_many_durables"), (11, "too_many_durables")]
    async with as_user(broker, "standings") as standings:
        for i in range(10):
            await standings.publish(f"standings.t{i}", b"x", confirm=True)
        await standings.subscribe("standings.>", durable="sqlite")
        async with as_user(broker, "fan") as fan:
            await fan.subscribe("chat.>", durable="sqlite")  # the same name, its own durable
            stats = await standings.stats()
    assert stats["server"]["topics"] == 20 and stats["server"]["durables"] == 12


async def test_sighup_reloads_the_users_and_closes_only_who_is_no_longer_allowed(
        processes: Processes, tmp_path: Path) -> None:
    users = event_file(tmp_path)
    broker = await processes.broker("--users", str(users))
    async with as_user(broker, "fan", reconnect=False) as fan, \
            as_user(broker, "standings", reconnect=False) as standings:
        await fan.subscribe("chat.>")
        sub = await standings.subscribe("standings.>")
        # The fan may no longer read chat; the standings user stays as it was.
        event_file(tmp_path, EVENT.replace('subscribe = ["chat.>", "standings.>"]',
                                           'subscribe = ["standings.>"]'))
        broker.process.send_signal(signal.SIGHUP)
        await wait_for(lambda: not fan.connected, "the fan's connection to be closed")
        assert "may no longer subscribe to 'chat.>'" in broker.log()
        await standings.publish("standings.x", b"still", confirm=True)
        assert (await asyncio.wait_for(sub.__anext__(), 5)).data == b"still"
        # A file that cannot be used: the one in force stays, and the log says why.
        users.write_text('[users.x]\npassword = "plain"\n')
        broker.process.send_signal(signal.SIGHUP)
        await wait_for(lambda: "users file not reloaded" in broker.log(), "the refusal")
        assert "line 2" in broker.log()
        await standings.publish("standings.y", b"after", confirm=True)
        with pytest.raises(ConnectionLostError, match=r"closed the connection "
                           r"\[permission_denied\]: user 'fan' may no longer subscribe"):
            await fan.publish("chat.x", b"x", confirm=True)


async def test_passwd_makes_a_hash_the_broker_takes_and_the_cli_logs_in_with_it(
        processes: Processes, tmp_path: Path) -> None:
    users = tmp_path / "users.toml"
    users.write_text('[users.rig1]\npublish = ["game.rig1.>"]\nsubscribe = ["game.>"]\n')
    code, _, err = await run_command("-m", "broker", "passwd", "rig1", "--stdin", "--file",
                                     str(users), stdin=b"correct horse\n")
    assert code == 0 and "password of 'rig1' written" in err, err
    assert users.read_text().splitlines()[1].startswith('password = "scrypt$16384$8$1$')
    broker = await processes.broker("--users", str(users))
    code, _, err = await run_command(
        "-m", "producer", "pub", "game.rig1.lap", '{"lap": 1}', "--broker", broker.address,
        "--user", "rig1", "--password", "correct horse")
    assert code == 0, err
    code, _, err = await run_command(
        "-m", "producer", "pub", "game.rig1.lap", "{}", "--broker", broker.address,
        "--user", "rig1", "--password", "wrong")
    assert code == 2 and "user or password wrong" in err, err
    code, _, err = await run_command("-m", "producer", "pub", "game.rig1.lap", "{}",
                                     "--broker", broker.address)
    assert code == 2 and "HELLO must name one" in err, err
    async with Client(broker.address, user="rig1", password="correct horse") as rig1:
        stats = await rig1.stats()
    assert stats["topics"]["game.rig1.lap"]["published"] == 1


@pytest.mark.parametrize(("text", "words"), [
    ('[users.a]\npassword = "hunter2"\n', "line 2: user 'a': password: not a password hash"),
    ('[users.a]\ncert = "a"\npublish = ["a..b"]\n', "line 3: user 'a': publish: bad pattern"),
    ('[users.a]\ncert = "a"\n[users.a]\ncert = "b"\n', "line 3"),
    ('[users.a]\ncert = "a"\nmax_topic = 3\n', "line 3: user 'a': unknown key 'max_topic'"),
])
async def test_a_bad_users_file_stops_the_broker_with_exit_2_and_the_line(
        tmp_path: Path, text: str, words: str) -> None:
    users = tmp_path / "users.toml"
    users.write_text(text)
    code, _, err = await run_command("-m", "broker", "--port", "0", "--users", str(users))
    assert code == 2, err
    assert words in err.strip().splitlines()[-1] and "Traceback" not in err


async def test_a_user_s_connections_beyond_its_quota_are_refused_as_a_full_broker_s_are(
        processes: Processes, tmp_path: Path) -> None:
    users = event_file(tmp_path, EVENT.replace('publish = ["chat.>"]',
                                               'publish = ["chat.>"]\nmax_connections = 2'))
    broker = await processes.broker("--users", str(users))
    async with as_user(broker, "fan"), as_user(broker, "fan"):
        with pytest.raises(ConnectError, match=r"full \[too_many_connections\]: user 'fan' "
                                              "holds its quota of 2 connections"):
            async with as_user(broker, "fan", reconnect=False):
                pass
        async with as_user(broker, "junk") as junk:  # another user is not affected
            assert (await junk.stats())["server"]["connections"] == 3


async def test_the_monitoring_port_labels_only_the_file_s_users(
        processes: Processes, tmp_path: Path) -> None:
    broker = await processes.broker("--users", str(event_file(tmp_path)), "--http",
                                    "127.0.0.1:0")
    for name in ("x1", "x2", "x3"):
        with pytest.raises(HandshakeRefusedError):
            async with Client(broker.address, user=name, password="p", reconnect=False):
                pass
    async with aiohttp.ClientSession() as session, \
            session.get(broker.http_url + "metrics") as response:
        figures = samples(await response.text())
    users = {dict(labels).get("user") for (name, labels) in figures
             if name == "slipstream_user_failed_logins_total"}
    assert users == {"", "standings", "fan", "junk", "screen"}
    assert figures[("slipstream_user_failed_logins_total", (("user", ""),))] == 3


NATS_USERS = """
anonymous = "screen"

[users.admin]
password = "{admin}"
publish = [">"]
subscribe = [">"]

[users.fan]
password = "{fan}"
publish = ["chat.>"]
subscribe = {{ allow = ["chat.>", "standings.>"], deny = ["chat.private.>"] }}

[users.screen]
subscribe = ["standings.>"]
"""


async def test_on_nats_the_same_users_file_gives_the_same_permissions(
        processes: Processes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`slipstream users --nats` prints nats-server's authorization for the users file; a
    3-node JetStream cluster started with it refuses what the embedded broker refuses."""
    users = tmp_path / "users.toml"
    users.write_text(NATS_USERS.format(admin=hash_password("admin-pw", CHEAP),
                                       fan=HASHES["fan"]))
    code, block, err = await run_command("-m", "broker", "users", str(users), "--nats")
    assert code == 0, err
    config = tmp_path / "nats.conf"
    config.write_text(block)
    monkeypatch.setenv("SLIPSTREAM_PASSWORD_ADMIN", "admin-pw")
    monkeypatch.setenv("SLIPSTREAM_PASSWORD_FAN", "fan-pw")
    nodes = await processes._start_nats(["n0", "n1", "n2"], [free_port() for _ in range(3)],
                                        ("-c", str(config)))  # a 3-node cluster
    address = nats_address(nodes)
    async with Client(address, name="admin", user="admin", password="admin-pw") as admin:
        await admin.publish("chat.hello", {"text": "the stream covers chat.>"}, confirm=True)
        await admin.publish("standings.track", {"track": "Monza"}, confirm=True)
        async with Client(address, name="fan", user="fan", password="fan-pw") as fan:
            standings = await fan.subscribe("standings.>", start="earliest")
            assert (await asyncio.wait_for(anext(standings), 10)).data == {"track": "Monza"}
            await fan.publish("chat.x", {"text": "hi"}, confirm=True)
            with pytest.raises(BrokerError) as refused:
                await fan.publish("standings.track", {"track": "Hacked GP"}, confirm=True)
            assert refused.value.code == "permission_denied"
            for pattern in ("game.>", "chat.private.x"):
                with pytest.raises(BrokerError) as refused:
                    await fan.subscribe(pattern)
                assert refused.value.code == "permission_denied", pattern
        async with Client(address, name="screen") as screen:  # no user: no_auth_user
            table = await screen.subscribe("standings.>", start="earliest")
            assert (await asyncio.wait_for(anext(table), 10)).data == {"track": "Monza"}
            with pytest.raises(BrokerError):
                await screen.publish("standings.track", {"track": "x"}, confirm=True)
        stats = await admin.stats()
    assert stats["topics"]["standings.track"]["retained"] == 1  # the forgeries never landed
