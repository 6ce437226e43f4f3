"""Unusable input is exit 2 with one line, before anything connects (issue 12, item 16).

Every command here is pointed at a port where no broker listens (9, discard): if it
tried to connect before checking its input, it would fail differently (exit 1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import ROOT, run_command

NOWHERE = "127.0.0.1:9"


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, "no reason given"
    return lines[-1]


@pytest.mark.parametrize("args", [
    ("-m", "consumer", "printer", "live.>.x"),
    ("-m", "consumer", "sqlite", "bad pattern"),
    ("-m", "broker", "stats", "--topics", "a..b"),
])
async def test_a_bad_pattern_on_the_command_line_is_exit_2(args: tuple[str, ...]) -> None:
    code, _, err = await run_command(*args, "--broker", NOWHERE)
    assert code == 2, err
    assert "bad pattern" in one_line(err)
    assert "Traceback" not in err and "handled" not in err  # no exit report: never started


async def test_replaying_something_that_is_not_a_recording_is_exit_2(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.txt"
    garbage.write_bytes(b"\x00\x01not a recording\n" * 10)
    empty = tmp_path / "empty"
    empty.mkdir()
    for path in (ROOT / "README.md", garbage, empty):
        code, _, err = await run_command("-m", "producer", "replay", str(path),
                                         "--broker", NOWHERE)
        assert code == 2, (path, err)
        assert "replay: error:" in one_line(err) and "Traceback" not in err


async def test_a_capture_whose_first_record_is_corrupt_is_exit_2(tmp_path: Path) -> None:
    capture = tmp_path / "bad.cap"
    good = (ROOT / "samples" / "game").glob("*.cap")
    data = bytearray(next(iter(sorted(good))).read_bytes())
    header = 8  # the magic; then the first record: time, length, CRC, datagram
    data[header + 20] ^= 0xFF  # inside the first datagram: its CRC no longer matches
    capture.write_bytes(bytes(data))
    code, _, err = await run_command("-m", "producer", "udp-replay", str(capture),
                                     "--broker", NOWHERE)
    assert code == 2, err
    assert "holds no whole record" in one_line(err) and "CRC mismatch" in one_line(err)


async def test_a_rules_file_that_is_not_utf8_is_exit_2_before_connecting(
        tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_bytes(b'[[rule]]\nname = "caf\xe9"\n')
    code, _, err = await run_command("-m", "consumer", "alerter", "--rules", str(rules),
                                     "--broker", NOWHERE)
    assert code == 2, err
    assert "not UTF-8" in one_line(err) and "Traceback" not in err


async def test_a_bare_port_is_a_port_on_this_machine() -> None:
    from broker.client import parse_address
    assert parse_address("20778") == ("127.0.0.1", 20778)
    assert parse_address("example.org") == ("example.org", 20778)


async def test_a_broker_beyond_loopback_without_a_token_refuses_to_start_unless_told() -> None:
    code, _, err = await run_command("-m", "broker", "--host", "0.0.0.0", "--port", "0")
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        "python -m broker: error: --host 0.0.0.0 without --token or --users: anyone who can "
        "reach this address could publish and read every topic; give --users FILE "
        "(docs/security.md) or --token, or --allow-anonymous if that is what you mean")
