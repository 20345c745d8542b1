"""Bad input on a request without a session: a clear, spec-shaped answer on every node,
and nothing created, recorded or leaked. A bare SDK node (no mcp-db) is the baseline for
what "the SDK's own answer" is."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
import redis as redis_py

from tests._nodes import Node
from tests.support.redis_server import RedisServer

HEADERS = {
    "accept": "application/json, text/event-stream",
    "content-type": "application/json",
    "mcp-protocol-version": "2025-06-18",
}
VALID_PARAMS = {
    "protocolVersion": "2025-06-18",
    "capabilities": {},
    "clientInfo": {"name": "bad-input", "version": "0"},
}


@pytest.fixture(scope="module")
def nodes() -> Iterator[tuple[Node, Node, Node, RedisServer]]:
    """Two nodes with SessionMiddleware on one Redis, and one bare SDK node."""
    redis = RedisServer().start()
    env = {"MCP_DB_REDIS_URL": redis.url, "MCP_DB_PREFIX": "bad"}
    started: list[Node] = []
    try:
        for extra in ({"MCP_DB_MIDDLEWARE": "1"}, {"MCP_DB_MIDDLEWARE": "1"}, {}):
            started.append(Node(env={**env, **extra}).start())
        yield started[0], started[1], started[2], redis
    finally:
        for node in started:
            node.stop()
        redis.cleanup()


def sessions_on(node: Node) -> int:
    return int(httpx.get(f"http://127.0.0.1:{node.port}/debug/sessions").json()["sessions"])


@pytest.mark.parametrize(
    "params",
    [None, {}, [], "x", {"protocolVersion": "2025-06-18"}],
    ids=["absent", "empty", "array", "string", "partial"],
)
def test_initialize_with_params_the_sdk_refuses_creates_no_session_on_any_node(
    nodes: tuple[Node, Node, Node, RedisServer], params: object
) -> None:
    """Defect 4 of issue 11: the SDK creates a transport for such an initialize and only
    then refuses its params; the session had an ID and no record, invisible to every
    other node and to ``mcp-db sessions list``, until the SDK's idle timeout."""
    a, b, _, redis = nodes
    body: dict[str, object] = {"jsonrpc": "2.0", "id": 7, "method": "initialize"}
    if params is not None:
        body["params"] = params
    before = (sessions_on(a), sessions_on(b))
    for node in (a, b):
        reply = httpx.post(node.url, content=json.dumps(body), headers=HEADERS)
        assert reply.status_code == 400, reply.text
        assert "mcp-session-id" not in reply.headers
        error = reply.json()
        assert error["id"] == 7 and error["error"]["code"] == -32602, error
    assert (sessions_on(a), sessions_on(b)) == before, "no transport was created"
    assert redis_py.Redis.from_url(redis.url).keys("bad:s:*") == [], "nothing recorded"


def test_a_valid_initialize_is_still_recorded(nodes: tuple[Node, Node, Node, RedisServer]) -> None:
    a, _, _, redis = nodes
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": VALID_PARAMS}
    reply = httpx.post(a.url, content=json.dumps(body), headers=HEADERS)
    assert reply.status_code == 200, reply.text
    session_id = reply.headers["mcp-session-id"]
    record = redis_py.Redis.from_url(redis.url).hgetall(f"bad:s:{{{session_id}}}")
    assert record[b"state"] == b"INITIALIZED", record


@pytest.mark.parametrize(
    "body",
    [b"[" * 5000 + b"]" * 5000, b'{"a":' * 5000 + b"1" + b"}" * 5000, b"{not json", b""],
    ids=["nested-arrays", "nested-objects", "garbled", "empty"],
)
def test_a_malformed_body_gets_the_sdks_own_answer(
    nodes: tuple[Node, Node, Node, RedisServer], body: bytes
) -> None:
    """Defect 5 of issue 11: 5,000 nested arrays made the middleware's own parsing raise
    RecursionError, and the client got mcp-db's 500 with a traceback in the log."""
    a, _, bare, _ = nodes
    expected = httpx.post(bare.url, content=body, headers=HEADERS)
    got = httpx.post(a.url, content=body, headers=HEADERS)
    assert got.status_code == expected.status_code, (got.text, expected.text)
    assert got.json()["error"]["code"] == expected.json()["error"]["code"]
    assert "mcp_db/middleware" not in a.output(), "no traceback from mcp-db"
