"""A client as the broker's sans-I/O core sees it, for tests that drive the core with
frames alone: no socket, no event loop, a clock that moves only when told."""

from __future__ import annotations

from dataclasses import replace

import msgpack

from broker.server.config import BrokerConfig
from broker.server.core import BrokerCore
from broker.server.session import Session, Wait
from broker.wire import protocol as p
from tests.sim.clock import VirtualClock


class Peer:
    """A client as the broker sees it: frames in, the broker's frames out, decoded."""

    def __init__(self, core: BrokerCore, name: str = "peer", version: int = 2, *,
                 hello: p.Hello | None = None, address: str = "10.0.0.1",
                 cert_name: str | None = None) -> None:
        self.session = Session(core, len(core.sessions) + 1, f"sim:{name}", address=address,
                               cert_name=cert_name)
        self.decoder = p.FrameDecoder(1 << 24)
        self.send(hello or p.Hello(version, name))
        self.answer = self.received()  # WELCOME, or the fatal ERROR that refused the HELLO
        if hello is None:
            assert [type(f) for f in self.answer] == [p.Welcome], self.answer

    def send(self, *frames: p.Frame, turns: bool = False) -> Wait:
        """Hand the broker `frames` and let it act; with `turns`, through every pass."""
        self.session.receive_data(b"".join(p.encode(f) for f in frames))
        wait = self.session.act()
        while turns and wait is Wait.TURN:
            wait = self.session.act()
        return wait

    def received(self) -> list[p.Frame | p.UnknownFrame]:
        """What the broker has for this client: its answers, then its deliveries."""
        self.session.send_pass()
        while self.session.delivery.dirty:
            self.session.send_pass()
        return self.decoder.feed(b"".join(self.session.data_to_send()))

    def messages(self) -> list[tuple[str, int, bytes]]:
        """(topic, seq, payload) of every delivery received, MSG and MSGM alike."""
        out = []
        for frame in self.received():
            for run in runs_of(frame):
                out += [(run.topic, run.first_seq + i, payload)
                        for i, payload in enumerate(run.payloads)]
        return out


def runs_of(frame: p.Frame | p.UnknownFrame) -> list[p.Deliver]:
    return [frame] if type(frame) is p.Deliver else []


def frame_types(data: bytes) -> list[int]:
    """The type code of each frame in `data` (MSG and MSGM told apart, unlike the decoder)."""
    types = []
    while data:
        size = int.from_bytes(data[:4], "big")
        types.append(msgpack.unpackb(data[4:4 + size])[0])
        data = data[4 + size:]
    return types


def broker(**settings: object) -> BrokerCore:
    return BrokerCore(replace(BrokerConfig(), **settings), VirtualClock())  # type: ignore[arg-type]


def pub(topic: str, *payloads: bytes, confirm: int | None = None) -> p.Publish:
    return p.Publish(topic, list(payloads), confirm)
