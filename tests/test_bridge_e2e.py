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
from tests._client import AUTO_RESUME, client_session, result_text
from tests._cluster import Cluster
from tests.support.redis_server import RedisServer

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
async def listener(url: str) -> AsyncIterator[Listener]:
    heard: list[str] = []

    async def on_message(message: Any) -> None:
        notification = getattr(message, "root", message)  # 1.x wraps it in a root model
        if isinstance(notification, types.ResourceUpdatedNotification):
            heard.append(str(notification.params.uri))
        elif type(notification) in METHODS:
            heard.append(METHODS[type(notification)])

    async with client_session(url, message_handler=on_message) as session:
        yield Listener(session, heard)


@pytest.fixture
def cluster(redis_server: RedisServer, prefix: str) -> Iterator[Cluster]:
    started = Cluster(
        redis_server,
        prefix,
        size=3,
        MCP_DB_BRIDGE="1",
        MCP_DB_LEASE_SECONDS=str(LEASE_SECONDS),
    ).start()
    try:
        yield started
    finally:
        started.stop()


async def on_three_nodes(stack: AsyncExitStack, url: str) -> list[Listener]:
    """Three sessions owned by three different nodes."""
    found: dict[int, Listener] = {}
    for _ in range(12):
        inner = AsyncExitStack()
        await stack.enter_async_context(inner)
        candidate = await inner.enter_async_context(listener(url))
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


async def test_publishes_reach_sessions_on_every_node_by_subscription(cluster: Cluster) -> None:
    async with AsyncExitStack() as stack:
        subscriber, other, actor = await on_three_nodes(stack, cluster.url)
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
async def test_a_subscription_survives_a_takeover_of_its_session(cluster: Cluster) -> None:
    async with AsyncExitStack() as stack:
        subscriber, other, actor = await on_three_nodes(stack, cluster.url)
        await subscriber.subscribe("note://watched")
        await warm_up(actor, subscriber, other)
        os.kill(subscriber.pid, signal.SIGKILL)
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


async def test_a_subscription_is_refused_past_its_byte_bound(cluster: Cluster) -> None:
    async with listener(cluster.url) as one:
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
    cluster: Cluster,
) -> None:
    from mcp.client import Client
    from mcp.shared.subscriptions import ResourceUpdated

    async with AsyncExitStack() as stack:
        subscriber, _, actor = await on_three_nodes(stack, cluster.url)
        await subscriber.subscribe("note://both")
        # The listen stream on the third node: neither the subscriber's nor the actor's.
        pids = {
            httpx.get(f"http://127.0.0.1:{n.port}/debug/pid").json()["pid"]: n
            for n in cluster.nodes
        }
        third = next(n for pid, n in pids.items() if pid not in (subscriber.pid, actor.pid))
        heard: list[Any] = []
        async with Client(third.url, mode="auto") as watching:
            async with watching.listen(
                tools_list_changed=True, resource_subscriptions=["note://both"]
            ) as stream:

                async def collect() -> None:
                    async for event in stream:
                        heard.append(event)

                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(collect)
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
                    tasks.cancel_scope.cancel()
        assert heard == [ResourceUpdated(uri="note://both")]
        assert subscriber.heard == ["note://both"]
