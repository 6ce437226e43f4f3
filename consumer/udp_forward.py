"""`python -m consumer udp-forward --to HOST:PORT ...`: the game's datagrams, re-emitted.

Only one program can bind the game's port; the UDP bridge (with --raw)
publishes every untouched datagram on `game.raw`, and this consumer sends
each one, byte for byte, to every target, so several existing telemetry
tools can each have the game's stream.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator

from broker import cli
from broker.client import Message
from consumer.api import Consumer

app = Consumer("udp-forward", description="Re-send the game's raw datagrams (game.raw) to "
                                          "one or more UDP targets, byte for byte.")


@app.arguments
def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--to", action="append", required=True, metavar="HOST:PORT",
                        help="a UDP target (repeat for several)")


@app.lifespan
async def _forwarding() -> AsyncIterator[None]:
    loop = asyncio.get_running_loop()
    targets: list[asyncio.DatagramTransport] = []
    try:
        for text in app.args.to:
            address = cli.flag_address(text, "--to")
            transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                               remote_addr=address)
            targets.append(transport)

        async def forward(message: Message) -> None:
            datagram = message.data
            if not isinstance(datagram, bytes):
                raise TypeError(f"game.raw payload is {type(datagram).__name__}, not bytes")
            for target in targets:
                target.sendto(datagram)

        app.add_handler("game.raw", forward)
        yield
    finally:
        for target in targets:
            target.close()
