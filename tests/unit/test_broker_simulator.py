"""The whole broker under the deterministic simulator (tests/sim/broker_sim.py): seeded
runs of its real core with simulated clients, a virtual clock and, with --data-dir, a
simulated disk; every invariant the docs promise is checked after every round.

`make soak` runs as many seeds as asked; here a bounded number run in every `make test`,
and bugs put back on purpose show that the invariants catch them."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from dataclasses import replace

import pytest

from broker.server.config import BrokerConfig
from broker.server.core import BrokerCore
from broker.server.delivery import Cursors, Delivery
from broker.server.durables import Durables
from broker.users.accounts import Limits
from broker.users.permissions import Rules
from broker.users.table import User
from tests.sim.broker_sim import Scenario, Simulation, Violation, run_scenario, scenarios

SEEDS_IN_MAKE_TEST = 160


def test_seeded_runs_of_the_whole_broker_keep_every_invariant() -> None:
    kinds: Counter[str] = Counter()
    for scenario in scenarios(1, SEEDS_IN_MAKE_TEST):
        sim = run_scenario(scenario)  # raises Violation, with the replay command
        kinds[f"{scenario.on_full}, {'disk' if scenario.disk else 'memory'}"] += 1
        kinds["with users"] += scenario.users
        kinds["gaps"] += sim.gaps
        kinds["restarts"] += sim.restarts
        kinds["slow consumers cut off"] += sim.core.counters["slow_consumers"]
        kinds["confirmed"] += sum(map(len, sim.truth.values()))
    # The seeds reach every mode and every kind of trouble they are meant to.
    assert all(kinds[f"{policy}, {where}"] > 10 for policy in ("drop", "block")
               for where in ("disk", "memory"))
    assert kinds["gaps"] > 100 and kinds["restarts"] > 50 and kinds["with users"] > 50
    assert kinds["slow consumers cut off"] > 20 and kinds["confirmed"] > 100_000


def test_a_seed_is_the_same_run_every_time_in_any_process() -> None:
    """Same seed, same bytes sent by the broker, even with another string hash seed."""
    scenario = Scenario.of(7, steps=300)
    code = ("import sys; from tests.sim.broker_sim import Scenario, run_scenario; "
            f"print(run_scenario(Scenario.parse({scenario.label!r})).trace)")
    traces = {subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONHASHSEED": str(hash_seed), "PYTHONPATH": "."},
    ).stdout for hash_seed in (1, 2)}
    assert len(traces) == 1 and int(traces.pop()) == run_scenario(scenario).trace


def test_a_scenario_label_parses_back_to_the_same_scenario() -> None:
    scenario = Scenario.of(12345, steps=77)
    assert Scenario.parse(scenario.label) == scenario


def _first_violation(count: int = 40) -> str:
    for scenario in scenarios(1, count):
        try:
            run_scenario(scenario)
        except Violation as exc:
            return str(exc)
    return ""


def test_the_simulator_catches_a_loss_that_no_gap_announces(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def silent(self: Delivery, sub: Cursors, topic: object, first: int, count: int,
               reason: str | None = None) -> None:
        pass  # the cursor still jumps: the subscriber just never hears of it

    monkeypatch.setattr(Delivery, "_gap", silent)
    found = _first_violation()
    assert "expected" in found and "skipped" in found and "replay it" in found


def test_the_simulator_catches_the_block_policy_evicting_unacknowledged_messages(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(BrokerCore, "keep_from",
                        lambda self, topic, publisher: topic.next_seq)
    assert "under --on-full block" in _first_violation()


def test_the_simulator_catches_a_durable_that_resumes_past_its_acknowledgements(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def hasty(self: Durables, sub: Cursors, now_s: float) -> None:
        durable = self.by_name[sub.durable or ""]
        durable.acked = {topic.name: seq for topic, seq in sub.cursors.items()}  # sent, not acked
        durable.owner = None

    monkeypatch.setattr(Durables, "release", hasty)
    assert "skipped what it never acknowledged" in _first_violation()


def test_the_simulator_catches_deliveries_beyond_the_window(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def generous(self: Delivery, sid: int, pattern: str, window: int,
                 durable: str | None) -> Cursors:
        return Cursors(self, sid, pattern, window * 2, durable)  # credit the client never gave

    monkeypatch.setattr(Delivery, "new_subscription", generous)
    assert "over its window" in _first_violation()


def test_the_simulator_catches_memory_over_the_budget(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(BrokerCore, "make_room", lambda self, wanted_bytes=0: True)
    assert "over --max-memory" in _first_violation()


def test_the_simulator_catches_a_connection_that_is_never_cut_off(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.sim import broker_sim
    monkeypatch.setattr(broker_sim.BrokerSide, "_stall_check", lambda self: None)
    found = _first_violation()
    assert "was not cut off" in found or "over the high-water mark" in found


def test_the_simulator_catches_a_publish_the_user_may_not_make(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Rules, "refuse_topic", lambda self, topic: None)
    found = _first_violation()  # a reader sees it first, or the intruder's PUBACK
    assert "|intruder|" in found or "its PUB to a topic it may not write was stored" in found


def test_the_simulator_catches_a_denied_topic_delivered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Rules, "denies", lambda self, topic: False)
    assert "which may not read it" in _first_violation()


def test_the_simulator_catches_a_user_over_its_topic_quota(
        monkeypatch: pytest.MonkeyPatch) -> None:
    original = Limits.of

    def generous(user: User, config: BrokerConfig, users: int) -> Limits:
        return replace(original(user, config, users), topics=1000)

    monkeypatch.setattr(Limits, "of", generous)
    assert "over its quota" in _first_violation()


def test_a_replayed_failure_is_the_same_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(BrokerCore, "make_room", lambda self, wanted_bytes=0: True)
    first = _first_violation()
    label = first.split("--replay '")[1].rstrip("'")
    with pytest.raises(Violation) as again:
        Simulation(Scenario.parse(label)).run()
    assert str(again.value) == first.splitlines()[0]


def test_the_simulator_catches_a_handshake_table_that_never_makes_room(
        monkeypatch: pytest.MonkeyPatch) -> None:
    original = BrokerCore.handshake_started

    def hoarding(self: BrokerCore, session: object) -> None:
        original(self, session)  # type: ignore[arg-type]  # counted, but nobody is dropped

    monkeypatch.setattr(BrokerCore, "handshake_started", hoarding)
    assert "over --max-handshakes" in _first_violation()
