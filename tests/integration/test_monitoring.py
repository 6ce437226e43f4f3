"""`--http`: /healthz, /varz and /metrics of a real broker, scraped as Prometheus would."""

from __future__ import annotations

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
