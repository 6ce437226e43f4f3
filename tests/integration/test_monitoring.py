"""`--http`: /healthz, /varz and /metrics of a real broker, scraped as Prometheus would."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker import Client
from broker.server.monitor import TOPICS_LABELLED, Monitor
from broker.server.server import Broker, BrokerConfig
from tests.helpers import Processes, run_command, take


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_the_endpoints_count_what_passed_through_exactly(processes: Processes) -> None:
    broker = await processes.broker("--http", "127.0.0.1:0")
    assert broker.http_url.startswith("http://127.0.0.1:")
    status, body = await get(broker.http_url + "healthz")
    assert (status, body) == (200, '{"status": "accepting"}')
    async with Client(broker.address, name="pub") as producer, \
               Client(broker.address, name="sub") as consumer:
        sub = await consumer.subscribe("demo.>")
        for n in range(30):
            await producer.publish("demo.a" if n % 3 else "demo.b", n)
        await take(sub, 30)
        status, text = await get(broker.http_url + "metrics")
        assert status == 200
        got = samples(text)
        assert got["slipstream_published_total", ()] == 30
        assert got["slipstream_delivered_total", ()] == 30
        assert got["slipstream_topic_published_total", (("topic", "demo.a"),)] == 20
        assert got["slipstream_topic_published_total", (("topic", "demo.b"),)] == 10
        assert got["slipstream_connections", ()] == 2
        assert got["slipstream_subscriptions", ()] == 1
        assert got["slipstream_gaps_total", ()] == 0
        assert got["slipstream_bytes_in_total", ()] > 30 * 2
        assert got["process_resident_memory_bytes", ()] > 1_000_000
        status, text = await get(broker.http_url + "varz")
    varz = json.loads(text)
    assert (varz["state"], varz["topics"], varz["totals"]["published"]) == ("accepting", 2, 30)


async def test_per_topic_series_are_bounded_whatever_the_broker_holds(
        processes: Processes) -> None:
    broker = await processes.broker("--http", "127.0.0.1:0")
    async with Client(broker.address) as client:
        for n in range(TOPICS_LABELLED * 3):
            await client.publish(f"many.t{n}", n)
        await client.publish("many.t7", "the busiest")
        await client.flush()
        await client.ping()
    _, text = await get(broker.http_url + "metrics")
    got = samples(text)
    labelled = [labels for name, labels in got if name == "slipstream_topic_published_total"]
    assert len(labelled) == TOPICS_LABELLED
    assert (("topic", "many.t7"),) in labelled  # the most published are the ones shown
    assert got["slipstream_published_total", ()] == TOPICS_LABELLED * 3 + 1
    assert got["slipstream_topics", ()] == TOPICS_LABELLED * 3


async def test_healthz_says_starting_then_accepting_then_stopping() -> None:
    broker = Broker(BrokerConfig(port=0))
    monitor = Monitor(broker.core, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{await monitor.start()}/healthz"
    try:
        assert await get(url) == (503, '{"status": "starting"}')
        await broker.start()
        assert await get(url) == (200, '{"status": "accepting"}')
        await broker.close()
        assert await get(url) == (503, '{"status": "stopping"}')
    finally:
        await monitor.close()


@pytest.mark.parametrize(("value", "reason"), [
    ("nonsense", "'nonsense' is not HOST:PORT (e.g. 127.0.0.1:8222)"),
    ("127.0.0.1:99999", "port 99999 in '127.0.0.1:99999' is outside 0..65535"),
])
async def test_a_bad_http_address_is_exit_2_with_the_reason(value: str, reason: str) -> None:
    code, _, err = await run_command("-m", "broker", "--http", value, "--port", "0")
    assert code == 2
    assert err.strip().splitlines()[-1] == f"python -m broker: error: argument --http: {reason}"


async def test_the_monitoring_port_caps_connections_and_times_out_slow_and_idle_ones(
        caplog: pytest.LogCaptureFixture) -> None:
    """Issue 24: slowloris and idle sockets on --http could take every file descriptor of
    the broker. Now at most `max_connections` are held, a request's headers must arrive
    within the header timeout, and a keep-alive connection idle past its timeout closes."""
    broker = Broker(BrokerConfig(port=0))
    monitor = Monitor(broker.core, "127.0.0.1", 0, max_connections=5, header_timeout_s=0.3,
                      idle_timeout_s=0.6)
    port = await monitor.start()
    url = f"http://127.0.0.1:{port}/healthz"
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
    try:
        extra_reader, _ = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(extra_reader.read(), 2) == b""  # over the cap: closed
        assert "at most 5" in caplog.text
        # The five send one header byte at a time, too slowly: closed at the header timeout.
        for _, writer in held:
            writer.write(b"G")
        started = asyncio.get_running_loop().time()
        for reader, writer in held:
            await asyncio.sleep(0.05)
            writer.write(b"E")  # still dribbling: bytes do not extend the header timeout
            assert await asyncio.wait_for(reader.read(), 2) == b""
        assert asyncio.get_running_loop().time() - started < 1.5
        assert monitor.guard.open == 0
        # A whole request is answered; the connection left idle is then closed.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        assert answer.startswith(b"HTTP/1.1 503")  # the broker was never started
        length = int(answer.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        body = await asyncio.wait_for(reader.readexactly(length), 2)
        assert json.loads(body) == {"status": "starting"}
        idle_from = asyncio.get_running_loop().time()
        assert await asyncio.wait_for(reader.read(), 2) == b""  # closed when idle
        assert asyncio.get_running_loop().time() - idle_from >= 0.5
        assert (await get(url))[0] == 503  # and the port still serves
        assert monitor.guard.refused == 1 and monitor.guard.timed_out >= 6
    finally:
        for _, writer in held:
            writer.close()
        await monitor.close()
