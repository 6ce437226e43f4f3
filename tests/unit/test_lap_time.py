"""The one lap-time parser: every way a person types a lap, and what is wrong with the rest."""

from __future__ import annotations

import pytest

from f1vocab.timing import LapTimeError, format_lap_time, lap_seconds, parse_lap_time


@pytest.mark.parametrize("text", ["1:25.606", "1.25.606", "85.606", "85.606s", " 85.606 S ",
                                  "1:25.606s", "01:25.606", "1:25,606", "85,606", "1,25,606"])
def test_every_accepted_form_reads_the_same_lap(text: str) -> None:
    assert parse_lap_time(text) == 85_606


@pytest.mark.parametrize(("text", "ms"), [("1:25.6", 85_600), ("1:25.60", 85_600),
                                          ("58.1", 58_100), ("1:05", 65_000),
                                          ("61.000", 61_000), ("2.03.004", 123_004),
                                          ("59:59.999", 3_599_999)])
def test_fewer_decimals_and_whole_seconds(text: str, ms: int) -> None:
    assert parse_lap_time(text) == ms


@pytest.mark.parametrize(("text", "says"), [
    ("", "no lap time given; type it as 1:25.606, 1.25.606, 85.606 or 85.606s"),
    ("   ", "no lap time given"),
    ("abc", "'abc' is not a lap time: the seconds 'abc' are not digits"),
    ("1:2a.3", "the seconds '2a' are not digits"),
    ("-1:25.0", "the minutes '-1' are not digits"),
    ("1:25.6x6", "the decimals '6x6' are not digits"),
    ("1:75.000", "'1:75.000' has 75 seconds after the minutes: seconds must be below 60 "
                 "(did you mean 2:15?)"),
    ("1:25.6061", "'1:25.6061' has 4 decimals: lap times are timed to the millisecond, "
                  "so give at most 3"),
    ("85.", "it has no whole seconds or no decimals after the dot"),
    (".5", "it has no whole seconds"),
    ("0.000", "it must be more than 0 and under an hour"),
    ("60:00.000", "it must be more than 0 and under an hour"),
    ("1:2:3.4", "are not digits"),
    # Digits of another script (Arabic-Indic 1:25.606): int() takes them, F1 never writes them.
    ("\u0661:\u0662\u0665.\u0666\u0660\u0666", "are not digits"),
])
def test_what_is_wrong_is_said(text: str, says: str) -> None:
    with pytest.raises(LapTimeError) as caught:
        parse_lap_time(text)
    assert says in str(caught.value)


@pytest.mark.parametrize(("ms", "text"), [(85_606, "1:25.606"), (58_120, "58.120"),
                                          (65_000, "1:05.000"), (123_004, "2:03.004"),
                                          (1, "0.001")])
def test_formatting_is_how_f1_writes_it_and_reads_back(ms: int, text: str) -> None:
    assert format_lap_time(ms) == text
    assert parse_lap_time(text) == ms


def test_live_timing_reads_through_the_same_parser() -> None:
    assert lap_seconds("1:27.123") == 87.123
    assert lap_seconds("27.123") == 27.123
    assert lap_seconds("") is None and lap_seconds(None) is None and lap_seconds("x") is None
