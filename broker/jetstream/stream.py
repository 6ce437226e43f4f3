"""The one JetStream stream that holds slipstream's topics: its shape, made or checked.

Topics are subjects one to one. The stream lists subject families ('live.>',
'game.>', ...); a topic or pattern outside them adds its family on first use,
so any topic works without configuring anything. Retention maps from the
embedded broker's flags: `max_msgs_per_subject` is --retain-messages, with
`discard old`, so a topic keeps its newest messages as it does there.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass
from typing import Any

from nats import errors as nats_errors
from nats.js import JetStreamContext
from nats.js import errors as js_errors
from nats.js.api import (
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamInfo,
)

from broker.client import DEFAULT_STREAM
from broker.errors import ConfigError, SlipstreamError
from broker.storage.topics import Retention

log = logging.getLogger("slipstream.client")

# slipstream's own topic families: a new stream starts with these.
FAMILIES = ("live.>", "game.>", "alerts.>", "demo.>", "standings.>")
DUPLICATE_WINDOW_S = 120.0  # a retried publish within this is stored once (Nats-Msg-Id)
MAX_SUBJECT_UPDATES = 10
PATIENCE_S = 20.0  # how long an unanswered JetStream API is asked again


@dataclass(frozen=True)
class StreamSpec:
    """What slipstream asks of the stream. `explicit` fields were given on the command
    line: an existing stream that differs in them is reported, not changed."""

    name: str = DEFAULT_STREAM
    max_msgs_per_subject: int = Retention().max_messages
    max_bytes: int = -1  # the whole stream; -1: no limit but the server's
    max_age_s: float = 0.0  # 0: no limit
    replicas: int | None = None  # None: min(3, the cluster's size)
    explicit: frozenset[str] = frozenset()


def family(topic_or_pattern: str) -> str | None:
    """The stream subject that covers a topic or pattern: 'live.>' for 'live.TimingData'.

    None when its first token is a wildcard ('>', '*.x'): no one family covers it.
    """
    first, dot, _ = topic_or_pattern.partition(".")
    if first in ("*", ">"):
        return None
    return f"{first}.>" if dot else first


def within(pattern: str, subject: str) -> bool:
    """Whether every topic `pattern` matches also matches stream subject `subject`."""
    inner, outer = pattern.split("."), subject.split(".")
    for index, token in enumerate(outer):
        if token == ">":
            return index < len(inner)
        if index >= len(inner) or inner[index] == ">":
            return False
        if token != "*" and token != inner[index]:
            return False
        # '*' covers any one token, including a '*' of the pattern
    return len(inner) == len(outer)


def covered(pattern: str, subjects: list[str]) -> bool:
    return any(within(pattern, subject) for subject in subjects)


def epoch_of(info: StreamInfo) -> int:
    """The stream's identity: its creation time in microseconds. A stream deleted and
    made again numbers from 1 again, under a new epoch, as a restarted broker does."""
    if info.created is None:
        return 1
    return int(info.created.timestamp() * 1_000_000)


def config_for(spec: StreamSpec, subjects: list[str], cluster_size: int) -> StreamConfig:
    replicas = spec.replicas if spec.replicas is not None else min(3, max(1, cluster_size))
    return StreamConfig(
        name=spec.name, subjects=subjects, retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD, storage=StorageType.FILE, num_replicas=replicas,
        max_msgs_per_subject=spec.max_msgs_per_subject, max_bytes=spec.max_bytes,
        max_age=spec.max_age_s, duplicate_window=DUPLICATE_WINDOW_S,
        description="slipstream topics (created by slipstream)")


def incompatibilities(config: StreamConfig, spec: StreamSpec) -> list[str]:
    """What makes an existing stream wrong for slipstream, or differ from the flags given."""
    problems = []
    if config.retention not in (None, RetentionPolicy.LIMITS):
        problems.append(f"retention is {_value(config.retention)}, slipstream needs limits "
                        "(every consumer reads at its own pace)")
    if config.discard not in (None, DiscardPolicy.OLD):
        problems.append(f"discard is {_value(config.discard)}, slipstream needs old "
                        "(a full topic drops its oldest, never refuses the newest)")
    if config.no_ack:
        problems.append("no_ack is set: publishes could not be confirmed")
    if config.sealed:
        problems.append("the stream is sealed: it takes no new messages")
    if config.mirror is not None:
        problems.append("the stream is a mirror: it takes no publishes")
    wanted: dict[str, tuple[Any, Any]] = {
        "retain-messages": (config.max_msgs_per_subject, spec.max_msgs_per_subject),
        "stream-bytes": (config.max_bytes, spec.max_bytes),
        "retain-age": (config.max_age or 0.0, spec.max_age_s),
        "replicas": (config.num_replicas, spec.replicas),
    }
    for flag, (have, want) in wanted.items():
        if flag in spec.explicit and have != want:
            problems.append(f"--{flag} is {want} but the stream has {have}")
    return problems


def _value(option: Any) -> str:
    return str(getattr(option, "value", option))


async def ensure_stream(js: JetStreamContext, spec: StreamSpec, cluster_size: int,
                        needs: str | None = None, patience_s: float = PATIENCE_S) -> StreamInfo:
    """The stream, created if missing, checked if not, with `needs`'s family added.

    An incompatible stream is reported with what differs (ConfigError), never changed.
    A cluster that does not answer yet (electing a leader) is asked again, with backoff,
    for `patience_s`.
    """
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + patience_s
    delay = 0.1
    for attempt in itertools.count(1):
        try:
            return await _ensure_once(js, spec, cluster_size, needs)
        except (nats_errors.TimeoutError, js_errors.ServiceUnavailableError) as exc:
            if loop.time() + delay > give_up_at:
                raise SlipstreamError(
                    f"JetStream did not answer for {patience_s:g} s ({type(exc).__name__}): "
                    "is nats-server running with -js, and has the cluster a leader?") from None
            if attempt == 1:
                log.warning("JetStream is not answering yet (%s); asking again for up to "
                            "%g s", type(exc).__name__, patience_s)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
    raise AssertionError("unreachable: itertools.count never ends")


async def _ensure_once(js: JetStreamContext, spec: StreamSpec, cluster_size: int,
                       needs: str | None) -> StreamInfo:
    for _ in range(MAX_SUBJECT_UPDATES):
        info = await _info_or_create(js, spec, cluster_size, needs)
        problems = incompatibilities(info.config, spec)
        if problems:
            raise ConfigError(f"JetStream stream {spec.name!r} exists with an incompatible "
                              f"configuration: {'; '.join(problems)}. It was left as it is: "
                              "change it with `nats stream edit`, or choose another --stream")
        subjects = list(info.config.subjects or [])
        wanted = family(needs) if needs is not None else None
        if needs is None or covered(needs, subjects) or wanted is None:
            return info
        info.config.subjects = [*subjects, wanted]
        try:
            await js.update_stream(info.config)
        except js_errors.BadRequestError as exc:
            raise SlipstreamError(f"cannot add {wanted!r} to JetStream stream {spec.name!r}: "
                                  f"{exc.description}") from None
        log.info("added subjects %r to JetStream stream %r", wanted, spec.name)
        # Read it again: another client may have updated the stream at the same time.
    raise SlipstreamError(f"JetStream stream {spec.name!r} kept changing while adding "
                          f"{family(needs or '')!r}")


async def _info_or_create(js: JetStreamContext, spec: StreamSpec, cluster_size: int,
                          needs: str | None) -> StreamInfo:
    try:
        return await js.stream_info(spec.name)
    except js_errors.NotFoundError:
        pass
    subjects = list(FAMILIES)
    wanted = family(needs) if needs is not None else None
    if wanted is not None and not covered(wanted, subjects):
        subjects.append(wanted)
    config = config_for(spec, subjects, cluster_size)
    try:
        info = await js.add_stream(config)
    except js_errors.BadRequestError as exc:
        if exc.err_code == 10058:  # created by someone else meanwhile ("name already in use")
            return await js.stream_info(spec.name)
        raise SlipstreamError(f"cannot create JetStream stream {spec.name!r}: "
                              f"{exc.description}") from None
    log.info("created JetStream stream %r: subjects %s, %d replicas, %d messages per topic",
             spec.name, ", ".join(subjects), config.num_replicas or 1,
             spec.max_msgs_per_subject)
    return info
