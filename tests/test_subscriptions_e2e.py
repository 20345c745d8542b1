"""2026-07-28 ``subscriptions/listen`` across nodes: SDK servers under uvicorn with
``RedisSubscriptionBus``, and the SDK's own ``Client``. A change published by a tool call
on one node reaches a listen stream opened on another, once, and only what it asked for."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator

import anyio
import httpx
import pytest

from mcp_db._sdk import SDK_MAJOR
from tests._client import listening
from tests._nodes import Node
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.skipif(SDK_MAJOR < 2, reason="subscriptions/listen is mcp 2.x")

if SDK_MAJOR >= 2:
    from mcp.client import Client
    from mcp.client.subscriptions import SubscriptionLost
    from mcp.shared.subscriptions import (
        PromptsListChanged,
        ResourcesListChanged,
        ResourceUpdated,
        ToolsListChanged,
    )


@pytest.fixture
def nodes(redis_server: RedisServer, prefix: str) -> Iterator[list[Node]]:
    env = {
        "MCP_DB_REDIS_URL": redis_server.url,
        "MCP_DB_PREFIX": prefix,
        "MCP_DB_SUBSCRIPTIONS": "1",
    }
    started = [Node(env=env).start() for _ in range(2)]
    try:
        yield started
    finally:
        for node in started:
            node.stop()


async def test_a_change_published_on_one_node_reaches_a_listen_stream_on_another(
    nodes: list[Node],
) -> None:
    publisher, listener = nodes
    async with (
        listening(
            listener.url, tools_list_changed=True, resource_subscriptions=["note://watched"]
        ) as heard,
        Client(publisher.url) as acting,
    ):
        # Until the listening node's subscription to Redis is up, a change may pass it
        # by (pub/sub keeps nothing): publish until the first one is heard.
        for _ in range(100):
            await acting.call_tool("publish", {"kind": "tools"})
            await asyncio.sleep(0.05)
            if heard:
                break
        assert heard, "a change published on the other node arrived"
        heard.clear()
        await acting.call_tool("publish", {"kind": "prompts"})  # not asked for
        await acting.call_tool("publish", {"kind": "resource", "uri": "note://other"})
        await acting.call_tool("publish", {"kind": "resource", "uri": "note://watched"})
        await acting.call_tool("publish", {"kind": "tools"})
        await asyncio.sleep(0.5)  # anything else would have arrived by now
    assert heard == [ResourceUpdated(uri="note://watched"), ToolsListChanged()], heard


async def test_sigterm_ends_a_listen_stream_gracefully(
    redis_server: RedisServer, prefix: str
) -> None:
    """A node told to stop (SIGTERM) ends its listen streams with the final result frame,
    so clients listen again elsewhere; it does not keep them open, nor cut them."""
    env = {
        "MCP_DB_REDIS_URL": redis_server.url,
        "MCP_DB_PREFIX": prefix,
        "MCP_DB_SUBSCRIPTIONS": "1",
        "MCP_DB_MIDDLEWARE": "1",
    }
    node = Node(env=env).start()
    try:
        async with Client(node.url, mode="auto") as watching:
            async with watching.listen(tools_list_changed=True) as stream:
                assert node.process is not None
                os.kill(node.process.pid, signal.SIGTERM)
                ended = "open"
                with anyio.move_on_after(5):
                    try:
                        async for _ in stream:
                            pass
                        ended = "graceful"
                    except SubscriptionLost:
                        ended = "lost"
                assert ended == "graceful", f"the listen stream ended: {ended}"
        # uvicorn re-raises the signal it handled once it has shut down: -SIGTERM.
        assert node.process.wait(10) in (0, -signal.SIGTERM), "the node then stopped"
    finally:
        node.stop()


async def test_a_redis_restart_drops_what_it_must_and_nudges_every_listen_stream(
    persistent_redis: RedisServer, prefix: str
) -> None:
    """Publishes while Redis is down reach no other node and are counted as dropped; once
    Redis is back, every listen stream is told that every list changed."""
    env = {
        "MCP_DB_REDIS_URL": persistent_redis.url,
        "MCP_DB_PREFIX": prefix,
        "MCP_DB_SUBSCRIPTIONS": "1",
        "MCP_DB_MIDDLEWARE": "1",  # for /debug/stats; 2026 requests pass it untouched
    }
    publisher, listener = [Node(env=env).start() for _ in range(2)]

    def dropped() -> int:
        stats = httpx.get(f"http://127.0.0.1:{publisher.port}/debug/stats").json()
        return int(stats["bus"]["dropped"])

    try:
        async with (
            listening(
                listener.url,
                tools_list_changed=True,
                prompts_list_changed=True,
                resources_list_changed=True,
                resource_subscriptions=["note://watched"],
            ) as heard,
            Client(publisher.url) as acting,
        ):
            for _ in range(100):  # until the listening node's subscription is up
                await acting.call_tool("publish", {"kind": "tools"})
                await anyio.sleep(0.05)
                if heard:
                    break
            assert heard
            await anyio.sleep(0.3)
            heard.clear()
            persistent_redis.stop()
            await acting.call_tool("publish", {"kind": "resource", "uri": "note://watched"})
            assert dropped() == 1, "counted as dropped on the publishing node"
            persistent_redis.start()
            with anyio.move_on_after(15):
                while len(heard) < 3:
                    await anyio.sleep(0.05)
            await anyio.sleep(0.3)
        assert heard == [ToolsListChanged(), PromptsListChanged(), ResourcesListChanged()], heard
    finally:
        publisher.stop()
        listener.stop()
