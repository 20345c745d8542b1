"""``RedisSubscriptionBus`` against a real redis-server, a Redis Cluster, and a server that
speaks TLS only and wants a password: two buses stand for two nodes (each bus is one
process's subscription, with its own origin). Every listener gets each event once, in
order, the publisher's included; with Redis down a publish reaches this node only and
never raises; after an outage every listener is told to refetch."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis as redis_py

from mcp_db import ConfigError, RedisEventStore, RedisSubscriptionBus
from mcp_db._sdk import SDK_MAJOR
from tests._redis_deployments import RedisCluster, TlsRedis
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.skipif(SDK_MAJOR < 2, reason="subscriptions/listen is mcp 2.x")

if SDK_MAJOR >= 2:
    from mcp.server.subscriptions import (
        PromptsListChanged,
        ResourcesListChanged,
        ResourceUpdated,
        ToolsListChanged,
    )

    PROBE = ResourceUpdated(uri="probe:subscribed")


class Heard:
    """A listener that keeps what it hears."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.changed = asyncio.Event()

    def __call__(self, event: Any) -> None:
        self.events.append(event)
        self.changed.set()

    async def until(self, count: int, timeout: float = 5) -> list[Any]:
        async def enough() -> None:
            while len(self.events) < count:
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(enough(), timeout)
        return self.events


async def subscribed(bus: RedisSubscriptionBus, publisher: RedisSubscriptionBus) -> None:
    """Waits until ``bus`` listens on Redis (its first listener started it): ``publisher``
    sends probes until one arrives."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while bus.stats()["received"] == 0:
        assert loop.time() < deadline, "the bus subscribed in time"
        await publisher.publish(PROBE)
        await asyncio.sleep(0.02)


DEPLOYMENTS = ["redis-server", "redis-cluster", "tls"]


@pytest.fixture(params=DEPLOYMENTS)
def redis_url(request: pytest.FixtureRequest) -> str:
    """A shared deployment's URL: one redis-server; a Redis Cluster, where the bus
    publishes and subscribes through the hub (``crates/core/src/cluster.rs``); TLS with a
    user and password."""
    if request.param == "redis-server":
        return str(request.getfixturevalue("redis_server").url)
    if request.param == "redis-cluster":
        return str(request.getfixturevalue("redis_cluster").url)
    return str(request.getfixturevalue("tls_redis").url())


@pytest.fixture(params=DEPLOYMENTS)
def outage(request: pytest.FixtureRequest) -> Iterator[tuple[str, Callable[[], None]]]:
    """A deployment of the test's own, and how to cut every subscription to it and bring
    it back: kill -9 and restart the server; on a cluster, kill -9 of the hub the buses
    listen on, after which the cluster promotes its replica."""
    if request.param == "redis-server":
        server = request.getfixturevalue("persistent_redis")
        yield server.url, lambda: (server.stop(), server.start())
    elif request.param == "redis-cluster":
        cluster = RedisCluster(hub_replica=True).start()
        try:
            yield cluster.url, cluster.kill_the_hub
        finally:
            cluster.cleanup()
    else:
        tls = TlsRedis().start()
        try:
            yield tls.url(), lambda: (tls.server.stop(), tls.server.start())
        finally:
            tls.cleanup()


async def test_every_listener_on_every_node_gets_each_event_once_in_order(
    redis_url: str, prefix: str
) -> None:
    a = RedisSubscriptionBus(redis_url, prefix=prefix)
    b = RedisSubscriptionBus(redis_url, prefix=prefix)
    on_a, on_b, also_on_b = Heard(), Heard(), Heard()
    a.subscribe(on_a)
    b.subscribe(on_b)
    unsubscribe = b.subscribe(also_on_b)
    await subscribed(b, a)
    await asyncio.sleep(0.1)  # the last probes still on their way
    probes = len(on_b.events)
    sent = [
        ToolsListChanged(),
        ResourceUpdated(uri="file:///notes/1"),
        PromptsListChanged(),
        ResourcesListChanged(),
    ]
    for event in sent:
        await a.publish(event)
    heard_on_b = await on_b.until(probes + len(sent))
    assert heard_on_b[probes:] == sent, "another node's listeners: each event once, in order"
    assert on_a.events[-len(sent) :] == sent
    await asyncio.sleep(0.3)  # an echo from Redis would have arrived by now
    assert [e for e in on_a.events if e != PROBE] == sent, (
        "the publisher's own listener got each event once (locally), not again from Redis"
    )
    assert len(also_on_b.events) == len(on_b.events), "every listener of a node"
    unsubscribe()
    unsubscribe()  # idempotent
    await a.publish(ToolsListChanged())
    await on_b.until(probes + len(sent) + 1)
    assert len(also_on_b.events) == probes + len(sent), "an unsubscribed listener hears nothing"


async def test_with_redis_down_a_publish_reaches_this_node_only_and_never_raises(
    persistent_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    bus = RedisSubscriptionBus(persistent_redis.url, prefix="down", timeout_seconds=0.5)
    here = Heard()
    bus.subscribe(here)
    persistent_redis.stop()
    with caplog.at_level(logging.WARNING, logger="mcp_db"):
        await bus.publish(ToolsListChanged())
    assert here.events == [ToolsListChanged()]
    stats = bus.stats()
    assert stats["dropped"] == 1 and stats["publish_failed"] == 1, stats
    assert any("reached this node only" in r.getMessage() for r in caplog.records)


async def test_after_an_outage_every_listener_is_told_to_refetch_every_list(
    outage: tuple[str, Callable[[], None]],
) -> None:
    url, cut = outage
    a = RedisSubscriptionBus(url, prefix="outage")
    b = RedisSubscriptionBus(url, prefix="outage")
    heard = Heard()
    b.subscribe(heard)
    await subscribed(b, a)
    await asyncio.sleep(0.1)
    before = len(heard.events)
    await asyncio.to_thread(cut)
    events = await heard.until(before + 3, timeout=15)
    assert events[before:] == [ToolsListChanged(), PromptsListChanged(), ResourcesListChanged()]
    await a.publish(ResourceUpdated(uri="file:///after"))
    assert (await heard.until(before + 4))[-1] == ResourceUpdated(uri="file:///after")


def _publishes(port: int) -> int:
    with redis_py.Redis(port=port) as node:
        return int(node.info("commandstats").get("cmdstat_publish", {}).get("calls", 0))


async def test_on_a_cluster_the_bus_publishes_and_subscribes_through_the_hub(
    redis_cluster: RedisCluster, prefix: str
) -> None:
    """The relay's hub rule (``crates/core/src/cluster.rs``) serves the bus too: every
    PUBLISH goes to the primary of slot 0, and the subscription listens there."""
    a = RedisSubscriptionBus(redis_cluster.url, prefix=prefix)
    b = RedisSubscriptionBus(redis_cluster.url, prefix=prefix)
    b.subscribe(Heard())
    await subscribed(b, a)
    hub = redis_cluster.hub()
    ports = [node.port for node in redis_cluster.nodes]
    before = {port: _publishes(port) for port in ports}
    for _ in range(20):
        await a.publish(ToolsListChanged())
    grew = {port: _publishes(port) - before[port] for port in ports}
    assert grew == {port: 20 if port == hub else 0 for port in ports}, (hub, grew)
    for port in ports:
        with redis_py.Redis(port=port) as node:
            listening = dict(node.pubsub_numsub(f"{prefix}:sub"))[f"{prefix}:sub".encode()]
        assert listening == (1 if port == hub else 0), (port, hub, listening)


async def test_on_a_cluster_a_planned_failover_of_the_hub_loses_nothing(prefix: str) -> None:
    """``CLUSTER FAILOVER`` demotes the hub and keeps it running, so the subscription on it
    stays open. A classic PUBLISH reaches every node of a cluster, replicas included: that
    subscription goes on hearing every event, those a bus started after the failover
    publishes through the new hub too, with no resubscription and no refetch."""
    cluster = RedisCluster(hub_replica=True).start()
    try:
        a = RedisSubscriptionBus(cluster.url, prefix=prefix)
        b = RedisSubscriptionBus(cluster.url, prefix=prefix)
        heard = Heard()
        b.subscribe(heard)
        await subscribed(b, a)
        await asyncio.sleep(0.1)
        before = len(heard.events)
        old_hub = cluster.hub()
        await asyncio.to_thread(cluster.fail_over_the_hub)
        assert cluster.hub() != old_hub
        c = RedisSubscriptionBus(cluster.url, prefix=prefix)  # publishes through the new hub
        sent = [ResourceUpdated(uri=f"file:///{i}") for i in range(3)]
        for event in sent:
            await a.publish(event)
        for event in sent:
            await c.publish(event)
        assert (await heard.until(before + 6))[before:] == sent + sent
        await asyncio.sleep(0.3)
        assert len(heard.events) == before + 6, "no refetch: nothing was missed"
        assert b.stats()["redis_errors"] == 0, b.stats()
        assert a.stats()["dropped"] == 0 and c.stats()["dropped"] == 0
    finally:
        cluster.cleanup()


async def test_a_bus_shares_a_stores_deployment_and_refuses_anything_else(
    redis_server: RedisServer, prefix: str
) -> None:
    async with RedisEventStore(redis_server.url, prefix=prefix) as store:
        bus = RedisSubscriptionBus(store)
        await bus.publish(ToolsListChanged())
        assert bus.stats()["published"] == 1
    with pytest.raises(ConfigError, match="Redis URL or a RedisEventStore"):
        RedisSubscriptionBus(42)  # type: ignore[arg-type]


async def test_published_delivered_and_dropped_are_exported(persistent_redis: RedisServer) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from mcp_db import metrics

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    metrics.register(provider.get_meter("test"))

    def exported() -> dict[str, float]:
        data = reader.get_metrics_data()
        assert data is not None
        return {
            metric.name: sum(float(point.value) for point in metric.data.data_points)
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name.startswith("mcp_db.subscriptions.")
        }

    try:
        before = exported()
        bus = RedisSubscriptionBus(persistent_redis.url, prefix="metrics", timeout_seconds=0.5)
        bus.subscribe(Heard())
        await bus.publish(ToolsListChanged())
        persistent_redis.stop()
        await bus.publish(PromptsListChanged())
        after = exported()
        grew = {name: after[name] - before.get(name, 0) for name in after}
        assert grew["mcp_db.subscriptions.published"] == 1, grew
        assert grew["mcp_db.subscriptions.delivered"] == 2, grew
        assert grew["mcp_db.subscriptions.dropped"] == 1, grew
    finally:
        provider.shutdown()
