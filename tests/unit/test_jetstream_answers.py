"""JetStream's answers to a publish, read as an operator needs them: "not yet" is retried
quietly (10158 "duplicate message id is in process" included: an earlier copy of the same
message is still being stored), a refusal is an error, and an outage is said once."""

from __future__ import annotations

import json

import pytest

from broker.jetstream.answers import Answer, Kind, Outage, classify


def error(code: int, err_code: int, description: str) -> bytes:
    return json.dumps({"error": {"code": code, "err_code": err_code,
                                 "description": description}}).encode()


def test_a_stored_publish_gives_its_seq() -> None:
    assert classify(None, b'{"stream": "SLIPSTREAM", "seq": 42}') == Answer(Kind.STORED, 42)


@pytest.mark.parametrize(("status", "data", "cause"), [
    (503, b"", "the stream has no leader"),
    (408, b"", "did not answer in time"),
    (None, error(409, 10158, "duplicate message id is in process"),
     "the stream's leader cannot commit"),
    (None, error(503, 10008, "JetStream system temporarily unavailable"),
     "the stream has no leader"),
])
def test_not_yet_is_retried_with_its_cause_in_an_operators_words(
        status: int | None, data: bytes, cause: str) -> None:
    answer = classify(status, data)
    assert answer.kind is Kind.NOT_YET and cause in answer.why


def test_a_real_refusal_is_refused_with_jetstreams_words() -> None:
    answer = classify(None, error(400, 10054, "maximum message size exceeded"))
    assert answer == Answer(Kind.REFUSED, why="maximum message size exceeded")
    assert classify(404, b"").kind is Kind.REFUSED


def test_an_outage_is_said_once_and_its_end_with_how_long() -> None:
    outage = Outage()
    assert outage.ended(10.0) is None  # nothing to end
    assert outage.started(10.0) and not outage.started(11.0)  # said once
    assert outage.ended(612.5) == 602.5
    assert outage.ended(613.0) is None
    assert outage.started(700.0)  # a new outage is said again
