"""Metrics: the Prometheus example on two nodes, scraped over HTTP, and the counters moved."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import warnings
from collections.abc import Iterator

import anyio
import httpx
import pytest

from tests._client import client_session, result_text
from tests._nodes import ROOT, Node
from tests.support.redis_server import RedisServer
from tests.test_resume_e2e import RawSession

pytest.importorskip("opentelemetry.sdk.metrics")
pytest.importorskip("opentelemetry.exporter.prometheus")
parser = pytest.importorskip("prometheus_client.parser")

APP = "examples.prometheus.server:app"

#: One scrape: (metric sample name, sorted labels without the scope's) -> value.
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(node: Node) -> Samples:
    response = httpx.get(f"http://127.0.0.1:{node.port}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    samples: Samples = {}
    for family in parser.text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = tuple(
                sorted((k, v) for k, v in sample.labels.items() if not k.startswith("otel_scope"))
            )
            samples[sample.name, labels] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample's value; 0 if the instrument has not reported it."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def nodes(redis_server: RedisServer, prefix: str) -> Iterator[list[Node]]:
    env = {"MCP_DB_REDIS_URL": redis_server.url, "MCP_DB_PREFIX": prefix}
    started: list[Node] = []
    try:
        for _ in range(2):
            started.append(Node(APP, env).start())
        yield started
    finally:
        for node in started:
            node.stop()


async def test_prometheus_example_counts_what_happens(nodes: list[Node]) -> None:
    owner, other = nodes
    # The SDK's own client: a session on the owner, a few calls.
    async with client_session(owner.url) as session:
        tools = await session.list_tools()
        assert {"echo", "where"} <= {t.name for t in tools.tools}
        assert result_text(await session.call_tool("echo", {"text": "hi"})) == "hi"
        # A change to a resource the session subscribed to, through the subscription bus.
        with warnings.catch_warnings():  # mcp 2.x calls resources/subscribe deprecated
            warnings.simplefilter("ignore")
            await session.subscribe_resource("note://hello")  # type: ignore[arg-type]
        assert result_text(await session.call_tool("edit_note", {"text": "new"})) == "saved"

    async with httpx.AsyncClient(timeout=10) as http:
        raw = await RawSession(http, owner.url).open()
        # A request in that session through the other node: relayed to the owner.
        relayed = await http.post(
            other.url,
            json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
            headers=raw.headers(),
        )
        assert relayed.status_code == 200, relayed.text
        # A stream resumed after its first event: the store replays from Redis.
        first = (await raw.event_ids_of_call())[0]
        async with http.stream("GET", owner.url, headers=raw.headers(**{"last-event-id": first})):
            await anyio.sleep(0.2)  # the replay is done before the stream opens
        # An unknown session, on each node.
        for node in nodes:
            unknown = await http.post(
                node.url,
                json={"jsonrpc": "2.0", "id": 3, "method": "tools/list"},
                headers={**raw.headers(), "mcp-session-id": "no-such-session"},
            )
            assert unknown.status_code == 404
        # A closed session.
        assert (await http.delete(owner.url, headers=raw.headers())).status_code == 200
        closed = await raw.post({"jsonrpc": "2.0", "id": 4, "method": "tools/list"})
        assert closed.status_code == 404

    at_owner, at_other = scrape(owner), scrape(other)
    seconds = "mcp_db_request_duration_seconds_count"

    assert value(at_owner, "mcp_db_events_stored_total", store="redis") >= 4
    batches = value(at_owner, "mcp_db_events_write_batches_total", store="redis")
    assert 1 <= batches <= value(at_owner, "mcp_db_events_stored_total", store="redis")
    # Each batch is a round trip to the redis-server on loopback: well under a second.
    assert 0 < value(at_owner, "mcp_db_events_write_time_seconds_total", store="redis") < batches
    assert value(at_owner, "mcp_db_sessions_admitted_total") == 2
    assert value(at_other, "mcp_db_sessions_admitted_total") == 0
    assert value(at_owner, "mcp_db_sessions_not_found_total", reason="unknown") == 1
    assert value(at_owner, "mcp_db_sessions_not_found_total", reason="closed") == 1
    assert value(at_other, "mcp_db_sessions_not_found_total", reason="unknown") == 1
    assert value(at_other, "mcp_db_relay_forwarded_total") == 1
    assert value(at_owner, "mcp_db_relay_served_total") == 1
    assert value(at_owner, "mcp_db_events_replay_duration_seconds_count", store="redis") == 1
    assert value(at_owner, seconds, path="initialize", method="POST") == 2
    assert value(at_owner, seconds, path="local", method="POST") >= 4
    assert value(at_owner, seconds, path="local", method="GET") >= 1
    assert value(at_owner, seconds, path="local", method="DELETE") >= 1
    assert value(at_owner, seconds, path="relay_in", method="POST") == 1
    assert value(at_owner, seconds, path="not_found", method="POST") == 2
    assert value(at_other, seconds, path="relayed", method="POST") == 1
    assert value(at_other, seconds, path="not_found", method="POST") == 1
    assert value(at_owner, "mcp_db_redis_errors_total", operation="event_write") == 0
    assert value(at_owner, "mcp_db_notifications_delivered_total") == 1
    assert value(at_other, "mcp_db_notifications_delivered_total") == 0
    buckets = [
        v
        for (name, labels), v in at_owner.items()
        if name == "mcp_db_request_duration_seconds_bucket"
        and ("path", "initialize") in labels
        and ("le", "+Inf") in labels
    ]
    assert buckets == [2], "the histogram has buckets, in seconds"


async def test_a_takeover_is_counted(nodes: list[Node]) -> None:
    owner, other = nodes
    async with httpx.AsyncClient(timeout=10) as http:
        raw = await RawSession(http, owner.url).open()
        owner.stop()  # SIGTERM: the owner hands its sessions over at once
        raw.url = other.url
        served = await raw.post({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
        assert served.status_code == 200, served.text
    samples = scrape(other)
    assert value(samples, "mcp_db_sessions_taken_over_total") == 1
    assert value(samples, "mcp_db_sessions_rehydrated_total") == 1
    seconds = "mcp_db_request_duration_seconds_count"
    assert value(samples, seconds, path="takeover", method="POST") == 1


async def test_a_hand_off_is_counted_on_both_nodes(nodes: list[Node]) -> None:
    """Two requests of a session in a row relayed from one node move the session there:
    the owner counts it handed off and the request as ``handed_off``; the other node counts
    it handed in and rebuilt, and from then on serves it itself."""
    owner, other = nodes
    async with httpx.AsyncClient(timeout=10) as http:
        raw = await RawSession(http, owner.url).open()
        raw.url = other.url
        for i in range(3):
            served = await raw.post({"jsonrpc": "2.0", "id": 2 + i, "method": "tools/list"})
            assert served.status_code == 200, served.text
    at_owner, at_other = scrape(owner), scrape(other)
    seconds = "mcp_db_request_duration_seconds_count"
    assert value(at_owner, "mcp_db_sessions_handed_off_total") == 1
    assert value(at_owner, seconds, path="relay_in", method="POST") == 1
    assert value(at_owner, seconds, path="handed_off", method="POST") == 1
    assert value(at_other, "mcp_db_sessions_handed_in_total") == 1
    assert value(at_other, "mcp_db_sessions_rehydrated_total") == 1
    assert value(at_other, seconds, path="relayed", method="POST") == 1
    assert value(at_other, seconds, path="local", method="POST") == 1
    assert value(at_other, "mcp_db_relay_forwarded_total") == 2


async def test_redis_errors_are_counted_by_operation(prefix: str) -> None:
    redis = RedisServer().start()
    node = Node(APP, {"MCP_DB_REDIS_URL": redis.url, "MCP_DB_PREFIX": prefix}).start()
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            raw = await RawSession(http, node.url).open()
            redis.stop()
            # The record cannot be read, but this node holds the session: it goes on.
            served = await raw.post({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
            assert served.status_code == 200, served.text
            unknown = await http.post(
                node.url,
                json={"jsonrpc": "2.0", "id": 3, "method": "tools/list"},
                headers={**raw.headers(), "mcp-session-id": "no-such-session"},
            )
            assert unknown.status_code == 503
        samples = scrape(node)
    finally:
        node.stop()
        redis.cleanup()
    assert value(samples, "mcp_db_redis_errors_total", operation="session_lookup") >= 1
    seconds = "mcp_db_request_duration_seconds_count"
    assert value(samples, seconds, path="unavailable", method="POST") == 1


def test_counts_outlive_a_collected_store() -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from mcp_db import MemoryEventStore, metrics

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    metrics.register(provider.get_meter("test"))

    def stored() -> float:
        data = reader.get_metrics_data()
        assert data is not None
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == "mcp_db.events.stored":
                        for point in metric.data.data_points:
                            if point.attributes == {"store": "memory"}:
                                return float(point.value)
        return 0.0

    try:
        store = MemoryEventStore()
        view = store.for_session("s1")
        before = stored()
        for _ in range(3):
            asyncio.run(view.store_event("1", None))
        counted = stored()
        assert counted >= before + 3
        del store, view
        gc.collect()
        assert stored() >= counted, "a collected store's events stay counted"
    finally:
        provider.shutdown()


def test_without_opentelemetry_nothing_breaks() -> None:
    code = """
import sys
sys.modules["opentelemetry.metrics"] = None  # as if not installed (mcp 2.x needs its tracing)
import asyncio
from mcp_db import MemoryEventStore, metrics
store = MemoryEventStore()
view = store.for_session("s")
event_id = asyncio.run(view.store_event("1", None))
async def sent(event): pass
assert asyncio.run(view.replay_events_after(event_id, sent)) == "1"
metrics.request_duration().record(0.1, {"path": "local"})
assert metrics._setup() is False, "no OpenTelemetry, no instruments"
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr
