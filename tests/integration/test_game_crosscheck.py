"""Our decoder against an independent one: the `f1-packets` releases on PyPI, one per format.

Test-only: each release is installed (once) into .venv/crosscheck/, beside the
project's environment, and run in its own process on the simulator's
datagrams. Skipped, saying why, only where the package index cannot be reached.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT

RELEASES = {2024: "2024.1.0", 2025: "2025.1.1", 2026: "2026.1.1"}
CACHE = ROOT / ".venv" / "crosscheck"


def installed(version: str) -> str:
    target = CACHE / f"f1-packets-{version}"
    if not (target / "f1" / "packets.py").exists():
        result = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
             str(target), f"f1-packets=={version}"], capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            pytest.skip(f"cannot install f1-packets=={version}: {result.stderr.strip()[-200:]}")
    return str(target)


@pytest.mark.parametrize("packet_format", sorted(RELEASES))
def test_the_simulators_datagrams_decode_the_same_with_f1_packets(packet_format: int) -> None:
    path = os.pathsep.join([installed(RELEASES[packet_format]), str(ROOT)])
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "crosscheck" / "f1_packets_check.py"),
         str(packet_format)], capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": path}, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"datagrams of format {packet_format} agree" in result.stdout
