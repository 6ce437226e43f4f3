"""Users, permissions and quotas (broker/users/), driven through the broker's sans-I/O core
with frames alone: logins, what each user may publish and read, the shares that keep one
user's junk from locking the others out, and a reload."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from broker.errors import ConfigError
from broker.server.config import BrokerConfig
from broker.server.core import BrokerCore
from broker.server.routing import covers
from broker.server.session import Wait
from broker.users.commands import with_password
from broker.users.passwords import BadHashError, hash_password, verify_password
from broker.users.table import UserTable, load_users, parse_users
from broker.wire import protocol as p
from tests.sim.clock import VirtualClock
from tests.sim.peer import Peer, broker, pub

CHEAP = (16, 1, 1)  # scrypt's cost, small: these tests check logic, not the work factor
HASHES = {name: hash_password(f"{name}-pw", CHEAP) for name in ("standings", "rig1", "rig2")}

EVENT = f"""
anonymous = "screen"

[users.standings]
password = "{HASHES['standings']}"
publish = ["standings.>"]
subscribe = ["standings.>", "game.>"]

[users.rig1]
password = "{HASHES['rig1']}"
publish = ["game.rig1.>"]
max_topics = 3
max_durables = 1
max_publish_rate = 10

[users.rig2]
password = "{HASHES['rig2']}"
publish = ["game.rig2.>"]
subscribe = {{ allow = ["game.>"], deny = ["game.*.secret"] }}

[users.screen]
subscribe = {{ allow = [">"], deny = ["admin.>"] }}

[users.cam]
cert = "track-cam"
publish = ["cam.>"]
"""


def event_broker(**settings: object) -> BrokerCore:
    return broker(users=parse_users(EVENT, "event.toml"), **settings)


def login(core: BrokerCore, user: str | None, password: str | None = None, *,
          address: str = "10.0.0.1", cert_name: str | None = None) -> Peer:
    return Peer(core, user or "anon", hello=p.Hello(2, user or "anon", password, user),
                address=address, cert_name=cert_name)


def welcomed(peer: Peer) -> bool:
    return [type(f) for f in peer.answer] == [p.Welcome]


def refusal(peer: Peer) -> tuple[str, str]:
    [error] = peer.answer
    assert type(error) is p.Error and error.fatal
    return error.code, error.message


def errors(peer: Peer) -> list[tuple[str, int | None, str]]:
    return [(f.code, f.ref, f.message) for f in peer.received() if type(f) is p.Error]


# --- the file ---------------------------------------------------------------------


def test_an_event_file_is_read_with_each_user_s_rules_and_quotas() -> None:
    table = parse_users(EVENT, "event.toml")
    assert sorted(table.users) == ["cam", "rig1", "rig2", "screen", "standings"]
    rig1 = table.users["rig1"]
    assert rig1.publish.allow == ("game.rig1.>",) and rig1.subscribe.allow == ()
    assert (rig1.quotas.max_topics, rig1.quotas.max_publish_rate) == (3, 10)
    assert table.users["rig2"].subscribe.deny == ("game.*.secret",)
    assert table.anonymous == "screen" and table.by_cert("track-cam") is table.users["cam"]


@pytest.mark.parametrize(("text", "words"), [
    ('[users.a]\npassword = "hunter2"\n', "line 2: user 'a': password: not a password hash"),
    (f'[users.a]\npassword = "{HASHES["rig1"]}"\npublsh = ["x"]\n',
     "line 3: user 'a': unknown key 'publsh'"),
    (f'[users.a]\npassword = "{HASHES["rig1"]}"\npublish = ["a..b"]\n',
     "line 3: user 'a': publish: bad pattern 'a..b'"),
    (f'[users.a]\npassword = "{HASHES["rig1"]}"\n[users.a]\npublish = []\n',
     "not valid TOML"),  # tomllib names the line of the second [users.a]
    (f'[users.a]\npassword = "{HASHES["rig1"]}"\nmax_topics = -1\n',
     "line 3: user 'a': max_topics must be a whole number >= 0"),
    ('[users.a]\npublish = [">"]\n', "line 1: user 'a' has no password and no cert"),
    (f'anonymous = "b"\n[users.a]\npassword = "{HASHES["rig1"]}"\n',
     "line 1: anonymous = 'b' names no user"),
    ('[users."a b"]\ncert = "x"\n', "user 'a b': a user name is"),
    ("title = 'x'\n", "line 1: unknown key 'title'"),
    ("", "no users"),
])
def test_a_bad_users_file_is_refused_with_its_line_and_what_is_wrong(
        text: str, words: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_users(text, "u.toml")
    assert words in str(refused.value)
    assert str(refused.value).startswith("--users u.toml")


def test_the_duplicate_user_refusal_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "u.toml"
    path.write_text('[users.a]\ncert = "x"\n\n[users.a]\ncert = "y"\n')
    with pytest.raises(ConfigError, match="line 4"):
        load_users(path)


def test_a_password_hash_checks_its_password_and_refuses_anything_else() -> None:
    stored = hash_password("s3cret", CHEAP)
    assert verify_password("s3cret", stored) and not verify_password("s3cret ", stored)
    with pytest.raises(BadHashError, match="plain-text password is refused"):
        verify_password("x", "s3cret")


def test_passwd_writes_a_user_s_password_into_a_file_and_keeps_the_rest() -> None:
    text = '# event\n[users.a]\npassword = "old"\npublish = ["x"]\n\n[users.b]\ncert = "b"\n'
    assert with_password(text, "a", "NEW") == text.replace('"old"', '"NEW"')
    added = with_password(text, "c", "H")
    assert added.startswith(text) and added.endswith('\n[users.c]\npassword = "H"\n')
    assert with_password(text, "b", "H").endswith('[users.b]\npassword = "H"\ncert = "b"\n')


@pytest.mark.parametrize(("outer", "inner", "expected"), [
    ("live.>", "live.*", True), ("live.>", "live.a.b", True), ("live.>", "live", False),
    ("live.>", ">", False), (">", "a.*.>", True), ("a.*", "a.b", True), ("a.*", "a.*", True),
    ("a.*", "a.>", False), ("a.b", "a.*", False), ("a.*.c", "a.x.c", True),
    ("*.x", "a.x.y", False), ("a.b", "a.b", True),
])
def test_a_pattern_covers_another_when_every_topic_of_it_matches(
        outer: str, inner: str, expected: bool) -> None:
    assert covers(outer, inner) is expected


# --- logins -----------------------------------------------------------------------


def test_a_user_logs_in_with_its_password_and_nobody_with_a_wrong_one() -> None:
    core = event_broker()
    assert welcomed(login(core, "rig1", "rig1-pw"))
    assert refusal(login(core, "rig1", "rig2-pw")) == ("auth", "user or password wrong")
    assert refusal(login(core, "nobody", "x")) == ("auth", "user or password wrong")
    assert refusal(login(core, "rig1")) == ("auth", "user or password wrong")
    assert core.accounts.by_name["rig1"].failed_logins == 2
    assert core.accounts.unknown_user_logins == 1


def test_no_user_is_the_anonymous_one_and_a_certificate_is_its_user() -> None:
    core = event_broker()
    screen = login(core, None)
    assert welcomed(screen) and screen.session.account is core.accounts.by_name["screen"]
    cam = login(core, None, cert_name="track-cam")
    assert welcomed(cam) and cam.session.account is core.accounts.by_name["cam"]
    assert welcomed(login(core, "cam", cert_name="track-cam"))
    assert refusal(login(core, "cam", cert_name="other"))[0] == "auth"


def test_without_an_anonymous_user_a_hello_must_name_one() -> None:
    text = EVENT.replace('anonymous = "screen"', "").replace(
        "[users.screen]", '[users.screen]\ncert = "screen"')
    core = broker(users=parse_users(text, "e.toml"))
    code, message = refusal(login(core, None))
    assert code == "auth" and "HELLO must name one" in message


def test_the_token_is_still_one_user_allowed_everything() -> None:
    core = broker(token="t0k")
    assert refusal(Peer(core, hello=p.Hello(2, "x", "nope")))[0] == "auth"
    peer = Peer(core, hello=p.Hello(2, "x", "t0k"))
    assert welcomed(peer) and peer.session.account is core.accounts.by_name["token"]
    peer.send(pub("any.topic", b"x", confirm=1))
    assert peer.received() == [p.PublishAck(1, 1, 1)]


def test_failed_logins_are_rationed_per_address_and_a_known_password_still_gets_in() -> None:
    core = event_broker()
    assert welcomed(login(core, "rig1", "rig1-pw", address="10.0.0.9"))  # checked: remembered
    for _ in range(10):
        assert refusal(login(core, "rig1", "guess", address="10.0.0.9"))[0] == "auth"
    code, message = refusal(login(core, "rig1", "guess", address="10.0.0.9"))
    assert code == "busy" and "too many failed logins from 10.0.0.9" in message
    assert welcomed(login(core, "rig1", "rig1-pw", address="10.0.0.9"))
    assert refusal(login(core, "rig2", "rig2-pw", address="10.0.0.9"))[0] == "busy"
    assert welcomed(login(core, "rig2", "rig2-pw", address="10.0.0.10"))
    clock = core.clock
    assert isinstance(clock, VirtualClock)
    clock.advance(2.0)  # the address's bucket refills a login a second
    assert welcomed(login(core, "rig2", "rig2-pw", address="10.0.0.9"))


def test_a_user_s_connections_are_capped_by_its_quota() -> None:
    core = broker(users=parse_users(EVENT.replace("max_topics = 3", "max_connections = 2"),
                                    "e.toml"))
    first, _ = login(core, "rig1", "rig1-pw"), login(core, "rig1", "rig1-pw")
    code, message = refusal(login(core, "rig1", "rig1-pw"))
    assert code == "too_many_connections" and "'rig1' holds its quota of 2" in message
    first.session.end()
    assert welcomed(login(core, "rig1", "rig1-pw"))


# --- permissions ------------------------------------------------------------------


def test_a_user_publishes_only_where_it_may_and_a_refusal_names_the_rule() -> None:
    core = event_broker()
    rig1 = login(core, "rig1", "rig1-pw")
    rig1.send(pub("game.rig1.lap", b"1", confirm=1), pub("standings.track", b"Hacked GP",
                                                         confirm=2))
    frames = rig1.received()
    assert frames[0] == p.PublishAck(1, 1, 1)
    assert type(frames[1]) is p.Error and (frames[1].code, frames[1].ref,
                                           frames[1].fatal) == ("permission_denied", 2, False)
    assert "user 'rig1' may not publish to 'standings.track': not in the allowed " \
        "patterns (game.rig1.>)" in frames[1].message
    assert "standings.track" not in core.topics
    assert core.accounts.by_name["rig1"].refused == {"permission_denied": 1}
    screen = login(core, None)
    screen.send(pub("standings.track", b"x", confirm=3))
    assert errors(screen)[0][:2] == ("permission_denied", 3)


def test_a_subscription_must_be_covered_and_denied_topics_are_left_out() -> None:
    core = event_broker()
    standings = login(core, "standings", "standings-pw")
    standings.send(pub("standings.track", b"Monza"))
    rig2 = login(core, "rig2", "rig2-pw")
    rig2.send(pub("game.rig2.secret", b"s"), pub("game.rig2.lap", b"l"))
    rig2.send(p.Subscribe(1, ">", "earliest"), p.Subscribe(2, "game.*.secret"),
              p.Subscribe(3, "game.>", "earliest"))
    frames = rig2.received()
    refused = [(f.code, f.ref, f.message) for f in frames if type(f) is p.Error]
    assert [r[:2] for r in refused] == [("permission_denied", 1), ("permission_denied", 2)]
    assert "no allowed pattern covers it (game.>; denied game.*.secret)" in refused[0][2]
    assert "every topic it matches is denied by 'game.*.secret'" in refused[1][2]
    assert [(f.topic, f.payloads) for f in frames if type(f) is p.Deliver] == [
        ("game.rig2.lap", [b"l"])]
    login(core, "rig1", "rig1-pw").send(pub("game.rig1.secret", b"s"), pub("game.rig1.x", b"x"))
    assert rig2.messages() == [("game.rig1.x", 1, b"x")]  # a new topic, denied: left out


# --- shares -----------------------------------------------------------------------


def test_one_user_s_topics_cannot_lock_another_out_of_new_ones() -> None:
    core = event_broker(max_topics=10)
    rig1, rig2 = login(core, "rig1", "rig1-pw"), login(core, "rig2", "rig2-pw")
    rig1.send(*(pub(f"game.rig1.junk{i}", b"x", confirm=i) for i in range(5)))
    refused = errors(rig1)
    assert [(code, ref) for code, ref, _ in refused] == [("too_many_topics", 3),
                                                          ("too_many_topics", 4)]
    assert "user 'rig1' holds its quota of 3 topics" in refused[0][2]
    rig2.send(*(pub(f"game.rig2.t{i}", b"x", confirm=i) for i in range(2)))
    assert errors(rig2) == []  # its own fair share: 10 // 5 users = 2
    rig2.send(pub("game.rig2.t2", b"x", confirm=9))
    assert errors(rig2)[0][:2] == ("too_many_topics", 9)


def test_durables_are_each_user_s_own_and_counted_against_its_quota() -> None:
    core = event_broker()
    standings, rig1 = login(core, "standings", "standings-pw"), login(core, "rig1", "rig1-pw")
    assert welcomed(standings)
    standings.send(p.Subscribe(1, "standings.>", "new", "sqlite"))
    screen = login(core, None)
    screen.send(p.Subscribe(1, "standings.>", "new", "sqlite"))  # the same name: its own
    assert [type(f) for f in screen.received()] == [p.Subscribed]
    assert {"standings:sqlite", "screen:sqlite"} <= set(core.durables.by_name)
    rig1.send(p.Subscribe(1, "game.rig1.>", "new", "a"))
    assert errors(rig1)[0][0] == "permission_denied"  # rig1 subscribes to nothing


def test_a_new_durable_past_the_user_s_quota_is_refused_and_an_old_one_resumes() -> None:
    core = broker(users=parse_users(EVENT.replace(
        'publish = ["game.rig2.>"]', 'publish = ["game.rig2.>"]\nmax_durables = 1'), "e.toml"))
    rig2 = login(core, "rig2", "rig2-pw")
    rig2.send(p.Subscribe(1, "game.>", "new", "one"), p.Subscribe(2, "game.>", "new", "two"),
              turns=True)
    frames = rig2.received()
    assert frames[0] == p.Subscribed(1)
    assert type(frames[1]) is p.Error and frames[1].code == "too_many_durables"
    assert "user 'rig2' holds its quota of 1 durables" in frames[1].message
    rig2.send(p.Unsubscribe(1), p.Subscribe(3, "game.>", "new", "one"), turns=True)
    assert rig2.received() == [p.Subscribed(3)]


def test_stats_shows_a_user_the_topics_it_may_read_and_its_own_connections() -> None:
    core = event_broker()
    login(core, "rig1", "rig1-pw").send(pub("game.rig1.secret", b"s"), pub("game.rig1.x", b"x"))
    login(core, "standings", "standings-pw").send(pub("standings.track", b"t"))
    rig2 = login(core, "rig2", "rig2-pw")
    rig2.send(p.StatsRequest(7, None))
    [reply] = rig2.received()
    assert type(reply) is p.StatsReply
    assert sorted(reply.stats["topics"]) == ["game.rig1.x"]
    assert [(c["user"], c["name"]) for c in reply.stats["connections"]] == [("rig2", "rig2")]
    screen = login(core, None)  # may read everything but admin.>: sees every topic
    screen.send(p.StatsRequest(8, None))
    [reply] = screen.received()
    assert type(reply) is p.StatsReply and len(reply.stats["topics"]) == 3


def test_a_user_s_publish_rate_is_shared_by_its_connections() -> None:
    core = event_broker()
    first, second = login(core, "rig1", "rig1-pw"), login(core, "rig1", "rig1-pw")
    assert first.send(pub("game.rig1.a", *([b"x"] * 10))) is Wait.READ  # a second's worth
    assert second.send(pub("game.rig1.a", b"x")) is Wait.RATE
    assert second.session.delay_s == pytest.approx(0.1)


# --- reload -----------------------------------------------------------------------


def test_a_reload_closes_only_the_connections_it_no_longer_allows() -> None:
    core = event_broker()
    rig1, rig2 = login(core, "rig1", "rig1-pw"), login(core, "rig2", "rig2-pw")
    assert welcomed(rig2)
    screen, standings = login(core, None), login(core, "standings", "standings-pw")
    screen.send(p.Subscribe(1, "live.>"))
    standings.send(p.Subscribe(1, "game.>"))
    for peer in (screen, standings):
        peer.received()
    changed = (EVENT.replace(f'password = "{HASHES["rig2"]}"',
                             f'password = "{hash_password("new", CHEAP)}"')
               .replace('subscribe = ["standings.>", "game.>"]', 'subscribe = ["standings.>"]')
               .replace("max_topics = 3", "max_topics = 1"))
    closing = core.reload_users(parse_users(changed, "event.toml"))
    assert sorted((s.account.name, code) for s, code, _ in closing  # type: ignore[union-attr]
                  ) == [("rig2", "auth"), ("standings", "permission_denied")]
    reasons = {s.account.name: m for s, _, m in closing}  # type: ignore[union-attr]
    assert "credential changed" in reasons["rig2"]
    assert "may no longer subscribe to 'game.>'" in reasons["standings"]
    rig1.send(pub("game.rig1.a", b"x", confirm=1), pub("game.rig1.b", b"x", confirm=2))
    assert [code for code, _, _ in errors(rig1)] == ["too_many_topics"]  # the new quota
    removed = core.reload_users(UserTable({"standings": core.accounts.by_name[
        "standings"].user}, None, "small.toml"))
    assert {s.account.name for s, _, _ in removed} >= {"rig1", "screen"}  # type: ignore[union-attr]


def test_a_durable_that_cannot_be_saved_counts_nothing_against_its_user(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused with `storage` after its topics were matched: neither the broker's followed
    topics nor the user's subscriptions may keep what the refused SUB would have held."""
    from tests.sim.filesystem import SimFiles

    core = BrokerCore(replace(BrokerConfig(), data_dir=Path("/data"),
                              users=parse_users(EVENT, "e.toml")), VirtualClock(), SimFiles())
    core.load()
    rig2 = login(core, "rig2", "rig2-pw")
    rig2.send(pub("game.rig2.a", b"x"), pub("game.rig2.b", b"x"))

    def full(positions: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(core.storage, "save_durables", full)
    rig2.send(p.Subscribe(1, "game.>", "earliest", "sqlite"))
    assert [code for code, _, _ in errors(rig2)] == ["storage"]
    account = core.accounts.by_name["rig2"]
    assert (core.followed, account.followed, account.subscriptions) == (0, 0, 0)
