"""Data flows one way (STYLE.md): consumers do not import producers, and the F1 vocabulary
both share (f1vocab) imports neither. Checked in a fresh interpreter, by what it loaded."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import ROOT


def loaded_after_importing(*modules: str) -> set[str]:
    code = ("import json, sys\n" + "".join(f"import {m}\n" for m in modules)
            + "print(json.dumps(sorted(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    return set(json.loads(done.stdout))


def test_consumers_import_no_producer_module() -> None:
    loaded = loaded_after_importing(
        "consumer.api", "consumer.printer", "consumer.sqlite", "consumer.alerter.app",
        "consumer.dashboard.app", "consumer.udp_forward", "consumer.__main__")
    assert not [m for m in loaded if m == "producer" or m.startswith("producer.")]


def test_the_shared_vocabulary_imports_neither_side() -> None:
    loaded = loaded_after_importing("f1vocab.state", "f1vocab.timing", "f1vocab.game.specs",
                                    "f1vocab.game.names", "f1vocab.game.layout")
    sides = [m for m in loaded if m.split(".")[0] in ("producer", "consumer")]
    assert sides == []


def test_a_subscription_does_not_import_its_client() -> None:
    """The client hands its subscriptions two callables (send a frame, forget me); neither
    module needs the other. (The package imports broker.client, the engine-neutral
    interface; the embedded client's implementation stays unloaded.)"""
    loaded = loaded_after_importing("broker.embedded.subscription", "broker.subscription")
    assert "broker.embedded.client" not in loaded
    assert not [m for m in loaded if m.startswith(("broker.jetstream", "nats"))]


def test_client_and_subscription_call_no_underscore_names_of_each_other() -> None:
    """Reading the source: no `client._x` in the subscriptions, no `sub._x` in the clients."""
    import re

    for path, other in (("broker/embedded/subscription.py", r"client"),
                        ("broker/subscription.py", r"client"),
                        ("broker/embedded/client.py", r"sub(?:scription)?"),
                        ("broker/jetstream/client.py", r"sub(?:scription)?"),
                        ("broker/jetstream/subscription.py", r"client")):
        text = (ROOT / path).read_text()
        assert not re.findall(rf"\b{other}\._[a-z]", text), path
