"""docs/messages.md stays what the specifications and the bundled session say."""

from __future__ import annotations

import importlib.util

from tests.helpers import ROOT


def test_the_message_reference_is_up_to_date() -> None:
    spec = importlib.util.spec_from_file_location(
        "message_reference", ROOT / "scripts" / "message_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = module.render()
    assert "### game.lap_data" in text and "### live.TimingData" in text
    assert (ROOT / "docs" / "messages.md").read_text(encoding="utf-8") == text, \
        "docs/messages.md is out of date: run python scripts/message_reference.py"
