"""What JetStream's answer to a publish means, and how an outage is told to an operator.

JetStream answers a publish with its seq, a status header (503: nobody
answers for the stream, e.g. it has no leader), or a JSON error. Some of
those mean "not yet" (the message may still land, or can be sent again with
its id): no responders, a timeout, a leader being elected, and 10158
"duplicate message id is in process", which is JetStream saying that an
earlier copy of this very message (same `Nats-Msg-Id`) is still being
stored: a resend during a slow commit, never a refusal. Those are retried
quietly; `Outage` says the cause once, and says when publishes are confirmed
again. Sans-I/O: the time is given.
"""

from __future__ import annotations

import json
from enum import Enum
from typing import Any, NamedTuple

RETRYABLE_STATUS = {408, 503}  # a timeout; no responders (no stream leader right now)
IN_PROCESS = 10158  # JSStreamDuplicateMessageConflict: an earlier copy is still being stored


class Kind(Enum):
    STORED = "stored: JetStream gave its seq"
    NOT_YET = "not yet: send it again later (same id)"
    REFUSED = "refused: it will not be stored"


class Answer(NamedTuple):
    kind: Kind
    seq: int = 0
    why: str = ""  # NOT_YET: the cause, in an operator's words; REFUSED: JetStream's


def classify(status: int | None, data: bytes) -> Answer:
    """The meaning of JetStream's reply to one publish (its status header and body)."""
    if status is not None:
        if status in RETRYABLE_STATUS:
            return Answer(Kind.NOT_YET, why=_cause(status, 0, ""))
        return Answer(Kind.REFUSED, why=f"status {status}")
    reply: dict[str, Any] = json.loads(data) if data else {}
    error = reply.get("error")
    if error is None:
        return Answer(Kind.STORED, seq=int(reply.get("seq", 0)))
    code, err_code = error.get("code", 0), error.get("err_code", 0)
    description = str(error.get("description", error))
    if code in RETRYABLE_STATUS or err_code == IN_PROCESS:
        return Answer(Kind.NOT_YET, why=_cause(code, err_code, description))
    return Answer(Kind.REFUSED, why=description)


def _cause(code: int, err_code: int, description: str) -> str:
    if err_code == IN_PROCESS:
        return ("the stream's leader cannot commit what it was sent (no quorum: too few "
                "of its nodes are up?)")
    if code == 503:
        return "the stream has no leader (no quorum: too few of its nodes are up?)"
    return f"JetStream did not answer in time{f' ({description})' if description else ''}"


class Outage:
    """Trouble that is retried quietly: said when it starts, and when it ends."""

    def __init__(self) -> None:
        self.since_s: float | None = None
        self.retried = 0

    def started(self, now_s: float) -> bool:
        """Something failed and will be retried: True the first time only (log it then)."""
        if self.since_s is not None:
            return False
        self.since_s = now_s
        return True

    def ended(self, now_s: float) -> float | None:
        """Something worked: how long the outage it ends lasted (None if there was none);
        the count of retries starts again (read it first)."""
        if self.since_s is None:
            return None
        lasted, self.since_s, self.retried = now_s - self.since_s, None, 0
        return lasted
