"""A real SDK server with the store, the SDK's own client, a stream cut mid-call."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
import redis

from mcp_db._sdk import SDK_VERSION
from tests._client import (
    AUTO_RESUME,
    client_session,
    kind,
    result_text,
)
from tests._nodes import Node
from tests.support.redis_server import RedisServer


@pytest.fixture(params=["redis", "memory"])
def node(request: pytest.FixtureRequest, redis_server: RedisServer, prefix: str) -> Iterator[Node]:
    env = {
        "MCP_DB_STORE": request.param,
        "MCP_DB_REDIS_URL": redis_server.url,
        "MCP_DB_PREFIX": prefix,
    }
    n = Node(env=env).start()
    yield n
    n.stop()


async def call_with_cut(url: str, n: int, cut_at: int) -> tuple[str, list[Any]]:
    """Calls ``steps`` and returns its result and the notifications the client saw."""
    seen: list[Any] = []
    if AUTO_RESUME:

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            seen.append(int(progress))

        async with client_session(url) as session:
            result = await session.call_tool(
                "steps", {"n": n, "cut_at": cut_at}, progress_callback=on_progress
            )
            return result_text(result), seen

    # mcp 1.12: no automatic reconnection; resume by hand with the last event ID, as its
    # docs describe: a new request carrying the resumption token.
    from mcp.shared.message import ClientMessageMetadata
    from mcp.types import CallToolRequest, CallToolRequestParams, CallToolResult, ClientRequest

    async def on_log(params: Any) -> None:
        seen.append(int(str(params.data).split()[-1]))

    token: list[str] = []

    async def on_token(t: str) -> None:
        token.append(t)

    request = ClientRequest(
        CallToolRequest(
            method="tools/call",
            params=CallToolRequestParams(name="steps", arguments={"n": n, "cut_at": cut_at}),
        )
    )
    async with client_session(url, logging_callback=on_log) as session:
        with anyio.move_on_after(1.0):  # the cut stream never answers: give up on it
            await session.send_request(
                request,
                CallToolResult,
                metadata=ClientMessageMetadata(on_resumption_token_update=on_token),
            )
        # The cut lands right after notification `cut_at` is queued; it may or may not
        # have gone out. Nothing after it did.
        assert seen == list(range(len(seen))) and cut_at <= len(seen) <= cut_at + 1, seen
        result = await session.send_request(
            request,
            CallToolResult,
            metadata=ClientMessageMetadata(
                resumption_token=token[-1], on_resumption_token_update=on_token
            ),
        )
        return result_text(result), seen


async def test_cut_post_stream_resumes_with_every_message_once_in_order(node: Node) -> None:
    text, seen = await call_with_cut(node.url, n=40, cut_at=12)
    assert text == "done 40"
    assert seen == list(range(40)), f"SDK {SDK_VERSION}: got {seen}"


async def test_resume_reads_from_redis(node: Node, redis_server: RedisServer, prefix: str) -> None:
    if node.env["MCP_DB_STORE"] != "redis":
        pytest.skip("checks the Redis keys")
    await call_with_cut(node.url, n=10, cut_at=3)
    r = redis.Redis.from_url(redis_server.url)
    keys = sorted(k.decode() for k in r.keys(f"{prefix}:e:*"))
    assert keys, "events were stored in Redis"
    sessions = {k.split("{", 1)[1].split("}", 1)[0] for k in keys}
    assert len(sessions) == 1 and "" not in sessions, f"events are scoped to the session: {keys}"
    # The tool call's stream holds its 10 notifications and the response, all tagged.
    tags = [[kind(f) for _, f in r.xrange(k)] for k in keys]
    assert any(t.count(b"n") == 10 and t.count(b"r") == 1 for t in tags), tags
    assert all(r.ttl(k) > 0 for k in keys), "every stream has a sliding TTL"


async def test_restarted_server_resumes_new_sessions_and_never_replays_old_ones(
    node: Node, redis_server: RedisServer, prefix: str
) -> None:
    text, seen = await call_with_cut(node.url, n=20, cut_at=5)
    assert (text, seen) == ("done 20", list(range(20)))

    node.stop()
    node.start()  # same port, same Redis, a new process

    text, seen = await call_with_cut(node.url, n=20, cut_at=7)
    assert (text, seen) == ("done 20", list(range(20)))
    if node.env["MCP_DB_STORE"] == "redis":
        # Both sessions' events are in Redis, each under its own session: the second
        # session's request ids repeat the first's, and neither replayed the other's.
        r = redis.Redis.from_url(redis_server.url)
        sessions = {k.decode().split("{", 1)[1].split("}", 1)[0] for k in r.keys(f"{prefix}:e:*")}
        assert len(sessions) == 2


async def test_two_sessions_with_equal_request_ids_each_resume_only_their_own(node: Node) -> None:
    # Both clients number their requests the same way, so their streams share ids.
    results = await asyncio.gather(
        call_with_cut(node.url, n=25, cut_at=6), call_with_cut(node.url, n=25, cut_at=9)
    )
    assert results == [("done 25", list(range(25)))] * 2


class RawSession:
    """A session driven with plain HTTP, to send exactly the headers a test needs."""

    def __init__(self, http: httpx.AsyncClient, url: str) -> None:
        self.http, self.url, self.id = http, url, ""
        self.request_ids = itertools.count(1000)  # for calls in flight at once

    def headers(self, **extra: str) -> dict[str, str]:
        return {
            "accept": "application/json, text/event-stream",
            "mcp-protocol-version": "2025-06-18",
            **({"mcp-session-id": self.id} if self.id else {}),
            **extra,
        }

    async def post(self, body: dict[str, Any]) -> httpx.Response:
        return await self.http.post(self.url, json=body, headers=self.headers())

    async def send_initialize(self, client: str = "raw") -> httpx.Response:
        """Posts ``initialize`` from a client named ``client`` and returns the answer as it
        came (a new session's ID is in its headers)."""
        return await self.post(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": client, "version": "0"},
                },
            }
        )

    async def initialize(self) -> RawSession:
        """Only ``initialize``: the session exists, ``notifications/initialized`` not sent."""
        init = await self.send_initialize()
        self.id = init.headers["mcp-session-id"]
        return self

    async def open(self) -> RawSession:
        await self.initialize()
        await self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return self

    async def answered_by(self, url: str, *, retry_for: float = 0) -> str:
        """The pid of the node that ran ``whoami`` for this session, sent to ``url``; a 503
        with Retry-After (Redis still recovering) is retried for ``retry_for`` seconds."""
        body = {"jsonrpc": "2.0", "id": next(self.request_ids), "method": "tools/call",
                "params": {"name": "whoami", "arguments": {}}}  # fmt: skip
        deadline = time.monotonic() + retry_for
        while True:
            reply = await self.http.post(url, json=body, headers=self.headers())
            if reply.status_code != 503 or time.monotonic() > deadline:
                break
            assert reply.headers.get("retry-after"), reply.headers
            await asyncio.sleep(0.2)
        assert reply.status_code == 200, (url, reply.status_code, reply.text)
        assert " on " in reply.text, (url, reply.headers, reply.text)
        return reply.text.rsplit(" on ", 1)[1].split('"', 1)[0]

    async def event_ids_of_call(self) -> list[str]:
        response = await self.post(
            {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/call",
                "params": {"name": "echo", "arguments": {"text": "hi"}},
            }
        )
        return [line[3:].strip() for line in response.text.splitlines() if line.startswith("id:")]


@pytest.mark.parametrize(
    "last_event_id",
    [
        "garbage",
        "x" * 1025,
        "{own}:2:99999999999999-0",
        "{own}:77:0-1",
        "{foreign}",
        "{own}:2:0-1 ; x-injected: 1",
    ],
)
async def test_bad_last_event_id_over_http_replays_nothing(node: Node, last_event_id: str) -> None:
    async with httpx.AsyncClient(timeout=5) as http:
        other, mine = (
            await RawSession(http, node.url).open(),
            await RawSession(http, node.url).open(),
        )
        foreign = (await other.event_ids_of_call())[-1]
        assert (await mine.event_ids_of_call())[-1].startswith(mine.id)
        value = last_event_id.format(own=mine.id, foreign=foreign)
        response = await http.get(node.url, headers=mine.headers(**{"last-event-id": value}))
        assert response.status_code == 200
        assert "data:" not in response.text, response.text
        # The session is untouched: it still answers.
        assert (await mine.event_ids_of_call())[-1].startswith(mine.id)
