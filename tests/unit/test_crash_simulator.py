"""The on-disk log under the crash simulator (tests/sim/): a crash at every step, a fault at
every step, flipped bits, all seeded; and proof that the simulator catches a broken store.
`make soak` runs the same for as long as asked."""

from __future__ import annotations

import pytest

from broker.storage.segments import FsyncPolicy, TopicStore
from tests.sim.cases import (
    Case,
    changes_of,
    crash_sweep,
    fault_cases,
    random_faults,
    random_policy,
    scripted_names,
    steps_of,
)
from tests.sim.crash import FAULTS, POLICIES

RANDOM_SEEDS = 300  # each: a crash at every step, 10 faults and a flipped bit


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("name", scripted_names())
def test_a_crash_at_every_step_loses_nothing_confirmed_and_recovers_alone(
        name: str, policy: FsyncPolicy) -> None:
    tried, failed, problems = crash_sweep(name, policy)
    assert failed is None, f"{failed.label}: {problems}"
    modes = 1 if policy == "never" else 2  # killed; and a power loss where one is promised
    assert tried == changes_of(name, policy) * modes


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("name", scripted_names())
def test_every_fault_at_every_step_refuses_cleanly_and_serves_nothing_refused(
        name: str, policy: FsyncPolicy) -> None:
    ran = 0
    for case in fault_cases(name, policy, every_fault=True):
        problems = case.run()
        assert problems is None or not problems, f"{case.label}: {problems}"
        ran += problems is not None
    assert ran == steps_of(name, policy) * len(FAULTS)  # every call can fail, reads too


def test_random_workloads_hold_under_crashes_faults_and_flipped_bits() -> None:
    crash_points = faults = flips = 0
    for seed in range(1, RANDOM_SEEDS + 1):
        tried, failed, problems = crash_sweep(f"random:{seed}", random_policy(seed))
        assert failed is None, f"{failed.label}: {problems}"
        crash_points += tried
        for case in random_faults(seed, 10):
            found = case.run()
            assert not found, f"{case.label}: {found}"
            faults += case.kind == "fault" and found is not None
            flips += case.kind == "flip" and found is not None
    assert crash_points > 50_000 and faults > 2500 and flips > 250


def test_a_case_replays_exactly_from_its_label() -> None:
    case = Case("random:7", "crash", random_policy(7), 40, 1, 0, 12345)
    assert Case.parse(case.label) == case
    assert case.run() == Case.parse(case.label).run() == []


def test_the_simulator_catches_a_refused_write_left_on_disk(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The bug of issue 22 item 1, put back: a failed write no longer cut back."""
    monkeypatch.setattr(TopicStore, "_undo_write", lambda self, active, exc: None)
    found = [c for c in fault_cases("scripted:many-new-topics", "interval", True)
             if c.run()]
    assert found and any(FAULTS[c.fault].short for c in found)


def test_the_simulator_catches_a_directory_never_synced(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A topic whose directory entry is never fsynced: only a power loss shows it."""
    original = TopicStore.create.__func__  # type: ignore[attr-defined]

    def forgetful(cls: type[TopicStore], /, *args: object, **kwargs: object) -> TopicStore:
        store: TopicStore = original(cls, *args, **kwargs)
        store._unsynced_dirs.clear()
        return store

    monkeypatch.setattr(TopicStore, "create", classmethod(forgetful))
    _, failed, problems = crash_sweep("scripted:many-new-topics", "always")
    assert failed is not None and failed.power_loss == 1
    assert any("gone" in p or "lost" in p for p in problems)
