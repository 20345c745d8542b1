"""A FastMCP 4 server (``tests/servers/fastmcp_app.py``) on several nodes: the scenarios the
SDK's own servers pass (``test_cluster.py``, ``test_live_state.py``), driven by FastMCP's
own ``Client`` and by the SDK's client.

Two deployments, each started once for the module: three uvicorn nodes behind nginx round
robin, and one ``uvicorn --workers 3`` port whose client opens a new connection for every
request. Either way the requests of one session land on different processes.
"""

from __future__ import annotations

import json
import os
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import mcp.types as types
import pytest
import redis as redis_py

pytest.importorskip("fastmcp")
pytestmark = pytest.mark.fastmcp

from fastmcp import Client  # noqa: E402
from fastmcp.client.transports import StreamableHttpTransport  # noqa: E402

from tests._client import client_session, owners_in_turn, result_text, sse_events  # noqa: E402
from tests._cluster import Cluster  # noqa: E402
from tests._messages import steps_call  # noqa: E402
from tests._nodes import Node  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402

APP = "tests.servers.fastmcp_app:app"
LEASE_SECONDS = 2.0
#: Sessions expire everywhere after this long idle.
SESSION_TTL_SECONDS = 4.0
HEADERS = {
    "accept": "application/json, text/event-stream",
    "content-type": "application/json",
    "mcp-protocol-version": "2025-11-25",
}


class Deployment:
    """``cluster``: three nodes behind nginx; ``workers``: ``uvicorn --workers 3``."""

    def __init__(self, kind: str, redis: RedisServer) -> None:
        self.kind = kind
        self.prefix = f"t-fastmcp-{kind}-{uuid.uuid4().hex[:8]}"
        self.redis = redis
        env = {
            "MCP_DB_REDIS_URL": redis.url,
            "MCP_DB_PREFIX": self.prefix,
            "MCP_DB_LEASE_SECONDS": str(LEASE_SECONDS),
            "MCP_DB_SESSION_TTL": str(SESSION_TTL_SECONDS),
            "MCP_DB_FASTMCP_STATE": "redis",
        }
        self.cluster: Cluster | None = None
        self.node: Node | None = None
        if kind == "cluster":
            self.cluster = Cluster(redis, self.prefix, size=3, app=APP, **env)
        else:
            self.node = Node(APP, env={**env, "MCP_DB_MIDDLEWARE": "1"}, workers=3)

    @property
    def url(self) -> str:
        return self.cluster.url if self.cluster is not None else self.node.url  # type: ignore[union-attr]

    @property
    def node_urls(self) -> list[str]:
        """Where to reach each node: the nodes themselves, or the workers' one port."""
        if self.cluster is not None:
            return [node.url for node in self.cluster.nodes]
        assert self.node is not None
        return [self.node.url] * 3

    def start(self) -> Deployment:
        if self.cluster is not None:
            self.cluster.start()
        else:
            assert self.node is not None
            self.node.start()
            self.node.worker_pids(30)
        return self

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
        elif self.node is not None:
            self.node.stop()

    def http(self) -> httpx.AsyncClient:
        """An HTTP client; under ``workers`` one that opens a connection per request."""
        limits = httpx.Limits(max_keepalive_connections=0 if self.kind == "workers" else 20)
        return httpx.AsyncClient(timeout=httpx.Timeout(30, read=60), limits=limits)

    def client(self, **handlers: Any) -> Client[Any]:
        """FastMCP's own client, in the handshake era (its default is sessionless)."""
        options: dict[str, Any] = {}
        if self.kind == "workers":
            options["httpx_client_factory"] = _fresh_connections
        transport = StreamableHttpTransport(self.url, **options)
        return Client(transport, mode="legacy", **handlers)

    def record(self, session_id: str) -> dict[str, str]:
        client = redis_py.Redis.from_url(self.redis.url, decode_responses=True)
        try:
            return client.hgetall(f"{self.prefix}:s:{{{session_id}}}")  # type: ignore[return-value]
        finally:
            client.close()

    def restart_dead_nodes(self) -> None:
        for node in self.cluster.nodes if self.cluster is not None else []:
            if node.process is None or node.process.poll() is not None:
                node.start()


def _fresh_connections(**options: Any) -> Any:
    import httpx2

    options.setdefault("timeout", httpx2.Timeout(30, read=300))
    return httpx2.AsyncClient(limits=httpx2.Limits(max_keepalive_connections=0), **options)


@pytest.fixture(scope="module", params=["cluster", "workers"])
def deployment(request: pytest.FixtureRequest) -> Iterator[Deployment]:
    redis = request.getfixturevalue("redis_server")
    deployed = Deployment(request.param, redis).start()
    try:
        yield deployed
    finally:
        deployed.stop()


# -- one session across nodes -------------------------------------------------------------


async def test_one_session_across_nodes_with_fastmcp_client(deployment: Deployment) -> None:
    steps: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        steps.append(progress)

    async with deployment.client(progress_handler=on_progress) as client:
        answers: list[str] = []
        for i in range(6):
            assert {"steps", "echo", "ask"} <= {tool.name for tool in await client.list_tools()}
            answers.append((await client.call_tool("whoami", {})).content[0].text)
            assert (await client.call_tool("echo", {"text": f"{i}"})).data == f"{i}"
            resource = await client.read_resource("note://greeting")
            assert resource[0].text == "hello from a resource"
            prompt = await client.get_prompt("review", {"code": "x = 1"})
            assert "Please review: x = 1" in str(prompt.messages[0].content)
        result = await client.call_tool("steps", {"n": 20})
        assert result.data == "done 20"
    assert steps == list(range(20)), "every progress step once, in order"
    assert {a.split(" on ")[0] for a in answers} == {"fastmcp"}, answers
    # Every call ran on the session's owner; a hand-off to a node its requests kept arriving
    # at may have moved it once.
    assert len(owners_in_turn(answers)) <= 2, f"the owner ran every call: {answers}"
    if deployment.cluster is not None:
        assert len(deployment.cluster.served_by()) == 3, "nginx spread them over every node"


async def test_one_session_across_nodes_with_the_sdk_client(deployment: Deployment) -> None:
    async with client_session(deployment.url, fresh_connections=deployment.kind == "workers") as s:
        answers = [result_text(await s.call_tool("whoami", {})) for _ in range(6)]
        assert result_text(await s.call_tool("echo", {"text": "hi"})) == "hi"
    assert len(owners_in_turn(answers)) <= 2, answers  # the owner, or the node it was handed to


async def test_a_stream_the_server_cuts_resumes_through_another_node(
    deployment: Deployment,
) -> None:
    """``ctx.close_sse_stream()`` mid-call: FastMCP's client resumes with ``Last-Event-ID``,
    through whichever node the balancer picks, and misses nothing."""
    steps: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        steps.append(progress)

    with anyio.fail_after(30):
        async with deployment.client(progress_handler=on_progress) as client:
            result = await client.call_tool("steps", {"n": 30, "cut_at": 9, "delay": 0.02})
    assert result.data == "done 30"
    assert steps == list(range(30)), "every step once, in order, across the cut"


# -- sampling and elicitation ---------------------------------------------------------------


async def test_sampling_and_elicitation_answered_through_other_nodes(
    deployment: Deployment,
) -> None:
    async def sample(messages: Any, params: Any, context: Any) -> str:
        return messages[0].content.text.upper()

    async def elicit(message: str, response_type: Any, params: Any, context: Any) -> Any:
        return {"ok": True, "note": message}

    answers = []
    async with deployment.client(sampling_handler=sample, elicitation_handler=elicit) as client:
        for i in range(3):  # each call's answers land on other nodes than its owner
            answers.append((await client.call_tool("ask", {"question": f"what is {i}?"})).data)
    assert answers == [f"WHAT IS {i}? | ok=True note=Is 'WHAT IS {i}?' right?" for i in range(3)]


async def test_sampling_and_elicitation_through_other_nodes_with_the_sdk_client(
    deployment: Deployment,
) -> None:
    async def sample(context: Any, params: Any) -> types.CreateMessageResult:
        text = params.messages[0].content.text.upper()
        content = types.TextContent(type="text", text=text)
        return types.CreateMessageResult(role="assistant", content=content, model="capitals")

    async def elicit(context: Any, params: Any) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content={"ok": False, "note": "sdk"})

    callbacks = {"sampling_callback": sample, "elicitation_callback": elicit}
    fresh = deployment.kind == "workers"
    async with client_session(deployment.url, fresh_connections=fresh, **callbacks) as session:
        answers = [
            result_text(await session.call_tool("ask", {"question": f"q{i}"})) for i in range(3)
        ]
    assert answers == [f"Q{i} | ok=False note=sdk" for i in range(3)]


# -- 404 everywhere -------------------------------------------------------------------------


@asynccontextmanager
async def _raw_session(deployment: Deployment) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    async with deployment.http() as http:
        init = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "raw", "version": "0"},
            },
        }
        response = await http.post(deployment.url, json=init, headers=HEADERS)
        assert response.status_code == 200, response.text
        session_id = response.headers["mcp-session-id"]
        headers = {**HEADERS, "mcp-session-id": session_id}
        done = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        assert (await http.post(deployment.url, json=done, headers=headers)).status_code == 202
        yield http, session_id


async def _status_on_every_node(
    deployment: Deployment, http: httpx.AsyncClient, session_id: str
) -> list[int]:
    call = {"jsonrpc": "2.0", "id": 9, "method": "tools/list"}
    headers = {**HEADERS, "mcp-session-id": session_id}
    return [
        (await http.post(url, json=call, headers=headers)).status_code
        for url in deployment.node_urls * 2
    ]


async def test_delete_forged_and_expired_ids_are_404_on_every_node(
    deployment: Deployment,
) -> None:
    async with _raw_session(deployment) as (http, deleted):
        assert await _status_on_every_node(deployment, http, deleted) == [200] * 6
        headers = {**HEADERS, "mcp-session-id": deleted}
        assert (await http.delete(deployment.url, headers=headers)).status_code == 200
        assert await _status_on_every_node(deployment, http, deleted) == [404] * 6
        assert await _status_on_every_node(deployment, http, uuid.uuid4().hex) == [404] * 6
    async with _raw_session(deployment) as (http, expiring):
        assert await _status_on_every_node(deployment, http, expiring) == [200] * 6
        await anyio.sleep(SESSION_TTL_SECONDS + 0.8)  # idle past the TTL
        assert await _status_on_every_node(deployment, http, expiring) == [404] * 6


# -- kill -9 --------------------------------------------------------------------------------


async def test_a_stream_cut_by_kill_9_of_its_owner_resumes_once_in_order(
    deployment: Deployment,
) -> None:
    """The node running a call is killed mid-stream; the client resumes the stream with
    ``Last-Event-ID`` through the balancer: a survivor takes the session over and replays
    what the dead node stored, once and in order. FastMCP's session state, kept in Redis,
    survives with the session."""
    call = steps_call(200, 0.02, "p")
    try:
        async with _raw_session(deployment) as (http, session_id):
            headers = {**HEADERS, "mcp-session-id": session_id}
            remember = {
                "jsonrpc": "2.0",
                "id": 3,
                "method": "tools/call",
                "params": {"name": "remember", "arguments": {"key": "k", "value": "v1"}},
            }
            response = await http.post(deployment.url, json=remember, headers=headers)
            assert "kept on" in response.text, response.text
            seen: list[dict[str, str]] = []
            async with http.stream("POST", deployment.url, json=call, headers=headers) as stream:
                async for event in sse_events(stream):
                    seen.append(event)
                    if len(seen) == 5:
                        break
            await anyio.sleep(0.3)  # the tool goes on storing events nobody reads
            # Under workers the session may already have been handed to the worker that got
            # its first requests (a new session is not calm): count from where it is now.
            before = deployment.record(session_id)
            owner = before["owner"]
            os.kill(int(owner.rsplit(":", 1)[1]), signal.SIGKILL)
            resume = {**headers, "accept": "text/event-stream", "last-event-id": seen[-1]["id"]}
            replayed: list[dict[str, str]] = []
            with anyio.move_on_after(LEASE_SECONDS + 5):
                async with http.stream("GET", deployment.url, headers=resume) as stream:
                    assert stream.status_code == 200
                    async for event in sse_events(stream):
                        replayed.append(event)
            recall = {
                "jsonrpc": "2.0",
                "id": 4,
                "method": "tools/call",
                "params": {"name": "recall", "arguments": {"key": "k"}},
            }
            response = await http.post(deployment.url, json=recall, headers=headers)
    finally:
        deployment.restart_dead_nodes()
    progress = [int(json.loads(e["data"])["params"]["progress"]) for e in seen + replayed]
    assert len(replayed) >= 5, "what the dead node stored came back from Redis"
    assert progress == list(range(len(progress))), "exactly once, in order"
    assert "v1 on" in response.text, f"the session state moved with the session: {response.text}"
    epoch = int(deployment.record(session_id)["epoch"])
    assert epoch == int(before["epoch"]) + 1, "taken over once"


# -- the store alone ------------------------------------------------------------------------


async def test_the_store_alone_on_one_node_resumes_streams_by_session(
    redis_server: RedisServer, prefix: str
) -> None:
    """Without the middleware, ``store.attach(app)`` binds the manager FastMCP creates when
    the app starts: events are keyed by the real session ID, and a cut stream resumes."""
    node = Node(APP, env={"MCP_DB_REDIS_URL": redis_server.url, "MCP_DB_PREFIX": prefix})
    node.start()
    steps: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        steps.append(progress)

    try:
        transport = StreamableHttpTransport(node.url)
        async with Client(transport, mode="legacy", progress_handler=on_progress) as client:
            result = await client.call_tool("steps", {"n": 20, "cut_at": 5})
            session_id = transport.get_session_id()
    finally:
        node.stop()
    assert result.data == "done 20"
    assert steps == list(range(20))
    client = redis_py.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:e:*"))
    finally:
        client.close()
    assert keys and all(f"{{{session_id}}}" in key for key in keys), keys


# -- the app's lifespan, run again -----------------------------------------------------------


def test_each_lifespan_serves_through_the_manager_it_created(
    redis_server: RedisServer, prefix: str
) -> None:
    """FastMCP creates a new session manager each time its app's lifespan starts (a test
    client entered twice, an app restarted in-process): the middleware serves the new one,
    records its sessions, and leaves the old one behind with its lifespan."""
    from fastmcp import FastMCP
    from starlette.testclient import TestClient

    from mcp_db import RedisEventStore, SessionMiddleware

    store = RedisEventStore(redis_server.url, prefix=prefix)
    server = FastMCP("twice")

    @server.tool
    def echo(text: str) -> str:
        return text

    app = SessionMiddleware(server.http_app(event_store=store), store=store)
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "twice", "version": "0"}}}  # fmt: skip
    managers = []
    for cycle in range(2):
        with TestClient(app) as client:
            opened = client.post("/mcp", json=init, headers=HEADERS)
            headers = {**HEADERS, "mcp-session-id": opened.headers["mcp-session-id"]}
            done = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            client.post("/mcp", json=done, headers=headers)
            params = {"name": "echo", "arguments": {"text": f"cycle {cycle}"}}
            call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": params}
            assert f"cycle {cycle}" in client.post("/mcp", json=call, headers=headers).text
            (endpoint,) = app.endpoints
            managers.append(endpoint.manager)
    assert managers[0] is not managers[1]
    assert app.stats()["admitted"] == 2
