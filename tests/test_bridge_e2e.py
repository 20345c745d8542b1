"""One publish for both eras: events of the subscription bus reach handshake-era sessions
on whichever node owns each (``SessionMiddleware(..., bus=...)``).

Three SDK nodes under uvicorn behind nginx round robin, each with ``SessionMiddleware``
and one ``RedisSubscriptionBus``; the SDK's own clients. A ``publish`` tool call lands on
one node (mcp 2.x: ``ctx.notify_*``; mcp 1.x: ``bus.notify_*``), and sessions owned by
the others hear it on their GET streams: list-changed every session, a resource update
only the sessions subscribed to its URI.
"""

from __future__ import annotations

import os
import signal
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import httpx
import mcp.types as types
import pytest
from mcp import ClientSession

from mcp_db._sdk import SDK_MAJOR
from tests._client import AUTO_RESUME, client_session, listening, result_text
from tests._cluster import Cluster
from tests._nodes import Node
from tests.support.redis_server import RedisServer

#: Expensive multi-node scenarios: once per SDK line (``make test`` runs them on the newest
#: 1.x and 2.x, not again on the oldest 1.x).
pytestmark = pytest.mark.multinode

LEASE_SECONDS = 1.5
#: Long enough for anything published to have arrived, had it been going to.
QUIET_SECONDS = 0.5

METHODS = {
    types.ToolListChangedNotification: "tools",
    types.PromptListChangedNotification: "prompts",
    types.ResourceListChangedNotification: "resources",
}


class Listener:
    """A handshake-era session through the load balancer, and what its GET stream heard:
    ``"tools"``, ``"prompts"``, ``"resources"`` or the URI of a resource update."""

    def __init__(self, session: ClientSession, heard: list[str]) -> None:
        self.session = session
        self.heard = heard
        self.pid = 0

    async def whoami(self) -> int:
        """The PID of the node that owns the session (every call runs on its owner)."""
        self.pid = int(result_text(await self.session.call_tool("whoami", {})).split()[-1])
        return self.pid

    async def subscribe(self, uri: str, *, on: bool = True) -> None:
        """``resources/(un)subscribe``, which mcp 2.x's client calls deprecated (the 2026
        era has ``subscriptions/listen`` instead): this is the handshake era."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if on:
                await self.session.subscribe_resource(uri)  # type: ignore[arg-type]
            else:
                await self.session.unsubscribe_resource(uri)  # type: ignore[arg-type]

    async def hears(self, what: str, seconds: float = 3.0) -> bool:
        with anyio.move_on_after(seconds):
            while what not in self.heard:
                await anyio.sleep(0.01)
            return True
        return False


@asynccontextmanager
async def listener(deployment: Deployment) -> AsyncIterator[Listener]:
    heard: list[str] = []

    async def on_message(message: Any) -> None:
        notification = getattr(message, "root", message)  # 1.x wraps it in a root model
        if isinstance(notification, types.ResourceUpdatedNotification):
            heard.append(str(notification.params.uri))
        elif type(notification) in METHODS:
            heard.append(METHODS[type(notification)])

    async with client_session(
        deployment.url, message_handler=on_message, fresh_connections=deployment.workers
    ) as session:
        yield Listener(session, heard)


class Deployment:
    """Three nodes behind nginx round robin, or one ``uvicorn --workers 3`` port (each
    request on a new connection, so the kernel spreads them over the workers)."""

    def __init__(self, kind: str, redis: RedisServer, prefix: str) -> None:
        env = {
            "MCP_DB_BRIDGE": "1",
            "MCP_DB_LEASE_SECONDS": str(LEASE_SECONDS),
            # Each actor's calls run on the node that owns its session: no hand-offs.
            "MCP_DB_HAND_OFF": "0",
        }
        self.workers = kind == "workers"
        self.cluster: Cluster | None = None
        self.node: Node | None = None
        if self.workers:
            base = {"MCP_DB_REDIS_URL": redis.url, "MCP_DB_PREFIX": prefix}
            self.node = Node(env={**base, "MCP_DB_MIDDLEWARE": "1", **env}, workers=3)
        else:
            self.cluster = Cluster(redis, prefix, size=3, **env)

    @property
    def url(self) -> str:
        return self.cluster.url if self.cluster is not None else self.node.url  # type: ignore[union-attr]

    def start(self) -> Deployment:
        if self.cluster is not None:
            self.cluster.start()
            return self
        assert self.node is not None
        self.node.start()
        self.node.worker_pids()
        return self

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
        elif self.node is not None:
            self.node.stop()

    def revive(self) -> None:
        """Restarts the nodes that died (``--workers``: waits for the supervisor to)."""
        if self.cluster is None:
            self.node.worker_pids()
            return
        for node in self.cluster.nodes:
            if node.process is None or node.process.poll() is not None:
                node.start()


@pytest.fixture(scope="module", params=["nginx", "workers"])
def deployment(request: pytest.FixtureRequest, redis_server: RedisServer) -> Iterator[Deployment]:
    """One deployment for the module's tests (each test has sessions of its own)."""
    started = Deployment(request.param, redis_server, f"bridge-{request.param}")
    started.start()
    try:
        yield started
    finally:
        started.stop()


async def on_three_nodes(stack: AsyncExitStack, deployment: Deployment) -> list[Listener]:
    """Three sessions owned by three different nodes."""
    found: dict[int, Listener] = {}
    for _ in range(30):
        inner = AsyncExitStack()
        await stack.enter_async_context(inner)
        candidate = await inner.enter_async_context(listener(deployment))
        if await candidate.whoami() in found:
            await inner.aclose()
            continue
        found[candidate.pid] = candidate
        if len(found) == 3:
            return list(found.values())
    pytest.fail(f"no three sessions on three nodes: owners {sorted(found)}")


async def publish(actor: Listener, kind: str, uri: str = "") -> None:
    result = await actor.session.call_tool("publish", {"kind": kind, "uri": uri})
    assert result_text(result) == f"pid {actor.pid}", "the call ran on the actor's owner"


async def warm_up(actor: Listener, *listeners: Listener) -> None:
    """Until a GET stream is up (and each node's bus subscription), what would go on it
    passes it by; the client cannot tell when it is. Publish until every one hears."""
    for _ in range(40):
        await publish(actor, "tools")
        if all([await each.hears("tools", 0.25) for each in listeners]):
            break
    else:
        pytest.fail(f"no list change reached every GET stream: {[e.heard for e in listeners]}")
    await anyio.sleep(QUIET_SECONDS)
    for each in (actor, *listeners):
        each.heard.clear()


async def test_publishes_reach_sessions_on_every_node_by_subscription(
    deployment: Deployment,
) -> None:
    async with AsyncExitStack() as stack:
        subscriber, other, actor = await on_three_nodes(stack, deployment)
        await subscriber.subscribe("note://watched")
        await warm_up(actor, subscriber, other)

        await publish(actor, "resource", "note://watched")
        await publish(actor, "resource", "note://unwatched")
        await publish(actor, "prompts")
        assert await subscriber.hears("prompts") and await other.hears("prompts")
        await anyio.sleep(QUIET_SECONDS)
        assert subscriber.heard == ["note://watched", "prompts"]
        assert other.heard == ["prompts"], "updates go to the URI's subscribers only"
        assert actor.heard == ["prompts"], "the publisher's own sessions hear it too, once"

        await subscriber.subscribe("note://watched", on=False)
        subscriber.heard.clear()
        other.heard.clear()
        await publish(actor, "resource", "note://watched")
        await publish(actor, "resources")
        assert await subscriber.hears("resources") and await other.hears("resources")
        await anyio.sleep(QUIET_SECONDS)
        assert subscriber.heard == ["resources"], "nothing after unsubscribing"
        assert other.heard == ["resources"]


@pytest.mark.skipif(not AUTO_RESUME, reason="mcp 1.12's client does not resume a cut GET stream")
async def test_a_subscription_survives_a_takeover_of_its_session(deployment: Deployment) -> None:
    async with AsyncExitStack() as stack:
        subscriber, other, actor = await on_three_nodes(stack, deployment)
        await subscriber.subscribe("note://watched")
        await warm_up(actor, subscriber, other)
        os.kill(subscriber.pid, signal.SIGKILL)
        stack.callback(deployment.revive)
        before = subscriber.pid
        # The next request of the session, once the dead owner's lease ran out, takes the
        # session over on another node; its client resumes the GET stream there.
        deadline = time.monotonic() + LEASE_SECONDS + 10
        while time.monotonic() < deadline:
            try:
                if await subscriber.whoami() != before:
                    break
            except Exception:  # 503 until the lease runs out
                await anyio.sleep(0.2)
        assert subscriber.pid != before, "the session was taken over"
        await warm_up(actor, subscriber)
        await publish(actor, "resource", "note://watched")
        assert await subscriber.hears("note://watched"), subscriber.heard
        await anyio.sleep(QUIET_SECONDS)
        assert subscriber.heard == ["note://watched"], "the new owner knows the subscription"
        assert other.heard.count("note://watched") == 0


async def test_a_subscription_is_refused_past_its_byte_bound(deployment: Deployment) -> None:
    async with listener(deployment) as one:
        with pytest.raises(Exception, match="8192 bytes"):
            await one.subscribe("note://" + "x" * 9000)
        # 64 KiB of URIs in all: eight of 8,008 bytes fit (64,064), a ninth does not.
        uris = [f"note://{i}/" + "x" * 8000 for i in range(9)]
        for uri in uris[:8]:
            await one.subscribe(uri)
        with pytest.raises(Exception, match="64 KiB"):
            await one.subscribe(uris[8])
        await one.subscribe(uris[0], on=False)
        await one.subscribe(uris[8])


@pytest.mark.skipif(SDK_MAJOR < 2, reason="subscriptions/listen is mcp 2.x")
async def test_one_publish_reaches_a_listen_stream_and_a_handshake_session(
    deployment: Deployment,
) -> None:
    from mcp.shared.subscriptions import ResourceUpdated

    async with AsyncExitStack() as stack:
        subscriber, _, actor = await on_three_nodes(stack, deployment)
        await subscriber.subscribe("note://both")
        # Through nginx, the listen stream on the third node: neither the subscriber's nor
        # the actor's. With --workers, on whichever worker its connection reaches.
        url = deployment.url
        if deployment.cluster is not None:
            pids = {
                httpx.get(f"http://127.0.0.1:{n.port}/debug/pid").json()["pid"]: n
                for n in deployment.cluster.nodes
            }
            url = next(n.url for p, n in pids.items() if p not in (subscriber.pid, actor.pid))
        async with listening(
            url, tools_list_changed=True, resource_subscriptions=["note://both"]
        ) as heard:
            await warm_up(actor, subscriber)
            for _ in range(40):  # the listen stream's node hears too
                if heard:
                    break
                await publish(actor, "tools")
                await anyio.sleep(0.1)
            await anyio.sleep(QUIET_SECONDS)
            heard.clear()
            subscriber.heard.clear()
            await publish(actor, "resource", "note://both")
            assert await subscriber.hears("note://both")
            await anyio.sleep(QUIET_SECONDS)
        assert heard == [ResourceUpdated(uri="note://both")]
        assert subscriber.heard == ["note://both"]


@pytest.mark.skipif(SDK_MAJOR < 2, reason="subscriptions/listen is mcp 2.x")
async def test_a_listen_stream_through_the_balancer_hears_each_node_once(
    deployment: Deployment,
) -> None:
    from mcp.shared.subscriptions import ResourceUpdated, ToolsListChanged

    async with AsyncExitStack() as stack:
        actors = await on_three_nodes(stack, deployment)
        watched = [f"note://from/{actor.pid}" for actor in actors]
        async with listening(
            deployment.url, tools_list_changed=True, resource_subscriptions=watched
        ) as heard:
            for _ in range(40):  # until the listening node's bus is subscribed
                await publish(actors[0], "tools")
                await anyio.sleep(0.1)
                if heard:
                    break
            await anyio.sleep(QUIET_SECONDS)
            heard.clear()
            for actor in actors:  # a call that runs on each node in turn
                await publish(actor, "resource", f"note://from/{actor.pid}")
                await publish(actor, "resource", "note://not-watched")
                await publish(actor, "prompts")  # not asked for
                await publish(actor, "tools")
            with anyio.move_on_after(3):
                while len(heard) < 6:
                    await anyio.sleep(0.01)
            await anyio.sleep(QUIET_SECONDS)
    expected = [ResourceUpdated(uri=uri) for uri in watched] + [ToolsListChanged()] * 3
    # Events of one node keep their order; those of different nodes may interleave.
    assert sorted(map(repr, heard)) == sorted(map(repr, expected)), heard
