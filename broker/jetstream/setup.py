"""`python -m broker --broker nats://...`: make or check the JetStream stream, then exit.

With NATS as the engine there is no slipstream broker process to run; what
remains is the stream's shape, which this sets from the same flags the
embedded broker takes (--retain-messages, --retain-age) plus JetStream's own
(--stream, --replicas, --stream-bytes). A stream that exists and differs in
a flag given here is reported with the difference and left alone.
"""

from __future__ import annotations

import argparse

from broker import cli
from broker.jetstream.client import JetStreamClient
from broker.jetstream.stream import StreamSpec

# Flags that, given on the command line, an existing stream must match.
CHECKED_FLAGS = ("retain-messages", "stream-bytes", "retain-age", "replicas")


def spec_from(args: argparse.Namespace, argv: list[str]) -> StreamSpec:
    given = frozenset(flag for flag in CHECKED_FLAGS
                      if any(arg == f"--{flag}" or arg.startswith(f"--{flag}=") for arg in argv))
    return StreamSpec(name=args.stream, max_msgs_per_subject=args.retain_messages,
                      max_bytes=args.stream_bytes, max_age_s=args.retain_age,
                      replicas=args.replicas, explicit=given)


async def prepare(args: argparse.Namespace, argv: list[str]) -> int:
    spec = spec_from(args, argv)
    client = JetStreamClient(args.broker, name="slipstream-setup", token=args.token,
                             reconnect=False, spec=spec)
    await client.connect()
    try:
        info = await client.js.stream_info(spec.name)
    finally:
        await client.close()
    config, state = info.config, info.state
    print(f"JetStream stream {spec.name!r} on {args.broker}: subjects "
          f"{', '.join(config.subjects or [])}; {config.num_replicas} replicas; keeps "
          f"{config.max_msgs_per_subject:,} messages per topic, "
          f"{'no byte limit' if (config.max_bytes or -1) < 0 else f'{config.max_bytes:,} B'}"
          f"{f', {config.max_age:g} s' if config.max_age else ''}; holds {state.messages:,} "
          f"messages (seq {state.first_seq}..{state.last_seq}), {state.consumer_count} "
          "consumers", flush=True)
    return cli.EXIT_OK
