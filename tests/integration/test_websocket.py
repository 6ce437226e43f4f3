"""The protocol over WebSocket (issue 26): the same frames, one per binary message, under
the same handshake, limits, users and permissions as TCP; a browser's Origin checked; and
bad input over WebSocket (text, oversize, an upgrade that never ends) refused with a
stated reason. A client here speaks the frames through aiohttp's WebSocket client."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import aiohttp
import pytest
import websockets

from broker import Client
from broker.users.passwords import hash_password
from broker.wire import protocol as p
from tests.helpers import Processes, free_port
from tests.integration.test_tls import Pki

ORIGIN = "http://localhost:8000"


def frames(data: bytes) -> list[p.Frame | p.UnknownFrame]:
    """The frames of one binary message; exactly one, as the broker sends them."""
    decoder = p.FrameDecoder()
    got = decoder.feed(data)
    assert decoder.buffered_bytes == 0 and decoder.error is None
    return got


async def receive(ws: aiohttp.ClientWebSocketResponse) -> p.Frame | p.UnknownFrame:
    message = await asyncio.wait_for(ws.receive(), 5)
    assert message.type is aiohttp.WSMsgType.BINARY, message
    [frame] = frames(message.data)
    return frame


async def hello(ws: aiohttp.ClientWebSocketResponse, user: str | None = None,
                password: str | None = None) -> p.Frame | p.UnknownFrame:
    await ws.send_bytes(p.encode(p.Hello(p.PROTOCOL_VERSION, "ws-test", password, user)))
    return await receive(ws)


async def test_publish_and_subscribe_over_websocket_counted_exactly(
        processes: Processes) -> None:
    broker = await processes.broker("--ws", "0")
    count = 1_000
    async with aiohttp.ClientSession() as session, session.ws_connect(broker.ws_url) as ws, \
            Client(broker.address, name="tcp") as tcp:
        assert isinstance(await hello(ws), p.Welcome)
        await ws.send_bytes(p.encode(p.Subscribe(1, "ws.>", "earliest", None, 100_000)))
        assert await receive(ws) == p.Subscribed(1)
        # Published over TCP, delivered over WebSocket; and the other way round.
        sub = await tcp.subscribe("back.>", start="earliest")
        for index in range(count):
            await tcp.publish_bytes("ws.from-tcp", index.to_bytes(4, "big"))
        await ws.send_bytes(p.encode(p.Publish("back.from-ws", [b"x"] * count, 9)))
        got: list[bytes] = []
        acked = None
        while len(got) < count or acked is None:
            frame = await receive(ws)
            if isinstance(frame, p.Deliver):
                got += frame.payloads
            elif isinstance(frame, p.PublishAck):
                acked = frame
        assert got == [index.to_bytes(4, "big") for index in range(count)]
        assert acked == p.PublishAck(9, 1, count)
        arrived = 0
        async with asyncio.timeout(10):
            async for batch in sub.batches():
                arrived += len(batch)
                if arrived >= count:
                    break
        assert arrived == count


async def test_a_frame_may_span_websocket_messages_and_a_message_hold_several(
        processes: Processes) -> None:
    """Client to broker, the binary messages' bytes are one stream, as on TCP."""
    broker = await processes.broker("--ws", "0")
    stream = p.encode(p.Hello(p.PROTOCOL_VERSION, "split")) + p.encode(p.Ping(1)) + \
        p.encode(p.Ping(2))
    async with aiohttp.ClientSession() as session, session.ws_connect(broker.ws_url) as ws:
        for start in range(0, len(stream), 3):  # three bytes at a time
            await ws.send_bytes(stream[start:start + 3])
        assert isinstance(await receive(ws), p.Welcome)
        assert await receive(ws) == p.Pong(1)
        assert await receive(ws) == p.Pong(2)


async def test_a_text_message_closes_with_1003_and_says_why(processes: Processes) -> None:
    broker = await processes.broker("--ws", "0")
    async with aiohttp.ClientSession() as session, session.ws_connect(broker.ws_url) as ws:
        await ws.send_str('{"hello": 2}')
        message = await asyncio.wait_for(ws.receive(), 5)
        assert message.type is aiohttp.WSMsgType.CLOSE
        assert message.data == 1003
        assert "send each frame as a binary message" in str(message.extra)


async def test_an_oversize_message_closes_with_1009(processes: Processes) -> None:
    broker = await processes.broker("--ws", "0", "--max-frame", "64KiB")
    async with aiohttp.ClientSession() as session, session.ws_connect(broker.ws_url) as ws:
        assert isinstance(await hello(ws), p.Welcome)
        await ws.send_bytes(b"\0" * (64 * 1024 + 5))
        message = await asyncio.wait_for(ws.receive(), 5)
        assert (message.type, message.data) == (aiohttp.WSMsgType.CLOSE, 1009)


async def test_an_oversize_frame_in_small_messages_gets_the_protocols_error(
        processes: Processes) -> None:
    """A frame longer than --max-frame, however it is cut into messages, is refused as on
    TCP: a fatal ERROR that says so, then the close."""
    broker = await processes.broker("--ws", "0", "--max-frame", "64KiB")
    async with aiohttp.ClientSession() as session, session.ws_connect(broker.ws_url) as ws:
        assert isinstance(await hello(ws), p.Welcome)
        await ws.send_bytes((1 << 20).to_bytes(4, "big") + b"\x91")
        error = await receive(ws)
        assert isinstance(error, p.Error) and error.fatal and "frame" in error.message


async def test_a_page_from_another_site_is_refused_and_an_allowed_one_connects(
        processes: Processes) -> None:
    broker = await processes.broker("--ws", "0", "--ws-allow-origin", ORIGIN)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(broker.ws_url, origin="http://evil.example")
        assert refused.value.status == 403
        async with session.get(broker.ws_url.replace("ws://", "http://"), headers={
                "Origin": "http://evil.example", "Upgrade": "websocket",
                "Connection": "Upgrade", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                "Sec-WebSocket-Version": "13"}) as response:
            assert response.status == 403
            assert "--ws-allow-origin http://evil.example" in await response.text()
        async with session.ws_connect(broker.ws_url, origin=ORIGIN) as ws:
            assert isinstance(await hello(ws), p.Welcome)
        async with session.ws_connect(broker.ws_url) as ws:  # no Origin: not a browser
            assert isinstance(await hello(ws), p.Welcome)


async def test_an_upgrade_that_never_ends_is_closed_in_time(processes: Processes) -> None:
    broker = await processes.broker("--ws", "0", "--handshake-timeout", "0.5")
    port = int(broker.ws_url.rsplit(":", 1)[1].strip("/"))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the rest
    async with asyncio.timeout(5):
        assert await reader.read() == b""  # closed by the broker
    writer.close()
    # And a WebSocket that never sends HELLO is the broker's usual handshake timeout.
    async with aiohttp.ClientSession() as session, session.ws_connect(broker.ws_url) as ws:
        error = await receive(ws)
        assert isinstance(error, p.Error) and error.code == "handshake_timeout"


async def test_users_and_permissions_hold_over_websocket(processes: Processes,
                                                         tmp_path: Path) -> None:
    users = tmp_path / "users.toml"
    users.write_text(f"""
[users.screen]
password = "{hash_password("screen-pw", (16, 1, 1))}"
subscribe = ["live.>"]
""")
    broker = await processes.broker("--ws", "0", "--users", str(users))
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(broker.ws_url) as ws:
            refused = await hello(ws, "screen", "wrong")
            assert isinstance(refused, p.Error) and refused.code == "auth"
        async with session.ws_connect(broker.ws_url) as ws:
            assert isinstance(await hello(ws, "screen", "screen-pw"), p.Welcome)
            await ws.send_bytes(p.encode(p.Publish("live.forged", [b"x"], 1)))
            error = await receive(ws)
            assert isinstance(error, p.Error) and error.code == "permission_denied"
            assert not error.fatal


async def test_ws_beyond_loopback_needs_users_and_a_bad_origin_is_refused_at_start(
        processes: Processes) -> None:
    from tests.helpers import run_command

    code, _, err = await run_command("-m", "broker", "--port", "0", "--ws",
                                     f"0.0.0.0:{free_port()}")
    assert code == 2 and "--ws 0.0.0.0 without --token or --users" in err
    code, _, err = await run_command("-m", "broker", "--port", "0", "--ws", "0",
                                     "--ws-allow-origin", "localhost:8000")
    assert code == 2 and "is not an origin" in err


async def test_wss_with_the_brokers_certificate(processes: Processes, pki: Pki) -> None:
    """With --tls-cert, the WebSocket listener is wss:// under the same certificate; the
    TLS handshake and then the upgrade each hold a slot, one after the other."""
    broker = await processes.broker("--tls-cert", str(pki.server_cert), "--tls-key",
                                    str(pki.server_key), "--ws", "0")
    assert broker.ws_url.startswith("wss://")
    context = ssl.create_default_context(cafile=str(pki.ca))
    async with aiohttp.ClientSession() as session, \
            session.ws_connect(broker.ws_url, ssl=context) as ws:
        assert isinstance(await hello(ws), p.Welcome)
        await ws.send_bytes(p.encode(p.Ping(5)))
        assert await receive(ws) == p.Pong(5)
    async with aiohttp.ClientSession() as session:  # an untrusted broker: refused by TLS
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await session.ws_connect(broker.ws_url)


async def test_a_fragmented_message_is_one_stream_of_bytes(processes: Processes) -> None:
    """A binary message sent in fragments (continuation frames) is read as its bytes."""
    broker = await processes.broker("--ws", "0")
    async with websockets.connect(broker.ws_url) as ws:
        frame = p.encode(p.Hello(p.PROTOCOL_VERSION, "fragments")) + p.encode(p.Ping(3))
        await ws.send([frame[:5], frame[5:9], frame[9:]])  # one message, three fragments
        answers = [await asyncio.wait_for(ws.recv(decode=False), 5) for _ in range(2)]
        welcome, pong = [frames(bytes(answer))[0] for answer in answers]
        assert isinstance(welcome, p.Welcome) and pong == p.Pong(3)


async def test_a_websocket_client_that_never_reads_is_cut_off(processes: Processes) -> None:
    """The same write timeout as TCP: a page that stops reading cannot pin the broker."""
    broker = await processes.broker("--ws", "0", "--write-timeout", "1")
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", int(broker.ws_url.rsplit(":", 1)[1].strip("/")))
    writer.transport.set_write_buffer_limits(0)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 b"Sec-WebSocket-Version: 13\r\n\r\n")
    assert b"101" in await reader.readline()
    mask = b"\x01\x02\x03\x04"
    for frame in (p.Hello(p.PROTOCOL_VERSION, "never-reads"),
                  p.Subscribe(1, "flood", "earliest", None, 1_000_000)):
        data = p.encode(frame)
        masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(data))
        writer.write(bytes([0x82, 0x80 | len(data)]) + mask + masked)  # small: 7-bit length
    async with Client(broker.address) as producer:
        for _ in range(200):
            await producer.publish_bytes("flood", b"x" * 20_000)
        try:
            async with asyncio.timeout(15):
                while "took no bytes for 1 s" not in broker.log():
                    await producer.publish_bytes("flood", b"x" * 20_000)
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise AssertionError(f"not cut off: {broker.log()[-3000:]}") from None
    assert "closing #1 'never-reads'" in broker.log()
    writer.close()
