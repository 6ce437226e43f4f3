"""Progress lines without a terminal (the bar itself is tqdm's)."""

from __future__ import annotations

import pytest

from broker.progress import Progress


def test_without_a_terminal_it_prints_a_line_per_interval(
        capsys: pytest.CaptureFixture[str]) -> None:
    with Progress("replay", 200, "msg", terminal=False, log_interval_s=0) as progress:
        progress.advance(50, "session time 00:14:00")
        progress.advance(50)
    assert capsys.readouterr().err.splitlines() == [
        "replay: 50 of 200 msg (25%), session time 00:14:00",
        "replay: 100 of 200 msg (50%), session time 00:14:00"]


def test_quiet_between_intervals_and_without_a_total(capsys: pytest.CaptureFixture[str]) -> None:
    with Progress("download", None, "feeds", terminal=False, log_interval_s=3600) as progress:
        progress.advance(3)
    assert capsys.readouterr().err == ""
    assert progress.line() == "download: 3 feeds"


def test_slipstream_progress_0_silences_it(capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLIPSTREAM_PROGRESS", "0")
    with Progress("replay", 10, "msg", terminal=True, log_interval_s=0) as progress:
        progress.advance(5)
    assert capsys.readouterr().err == "" and progress.done == 5
