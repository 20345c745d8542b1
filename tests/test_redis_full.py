"""Redis at ``maxmemory`` with ``noeviction``: the sessions that exist go on, on every node;
new sessions get a 503 that says Redis is full."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
import redis.asyncio as aioredis

from tests._faults import Faults
from tests._nodes import Node
from tests.support.redis_server import RedisServer
from tests.test_resume_e2e import RawSession

#: Expensive multi-node scenarios: once per SDK line (``make test`` runs them on the newest
#: 1.x and 2.x, not again on the oldest 1.x).
pytestmark = pytest.mark.multinode

#: Lease of the nodes: short, so the test outlives several leases while Redis is full.
LEASE_SECONDS = 1.0


@pytest.fixture
def full_redis() -> Iterator[RedisServer]:
    server = RedisServer(args=["--maxmemory-policy", "noeviction"]).start()
    yield server
    server.cleanup()


def log_size(node: Node) -> int:
    return node.log.stat().st_size if node.log.exists() else 0


def log_since(node: Node, offset: int) -> str:
    """What the node logged past ``offset`` (its log file may hold an earlier run's)."""
    with node.log.open("rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


async def whoami(http: httpx.AsyncClient, url: str, session: RawSession, n: int) -> httpx.Response:
    body = {"jsonrpc": "2.0", "id": n, "method": "tools/call",
            "params": {"name": "whoami", "arguments": {}}}  # fmt: skip
    return await http.post(url, json=body, headers=session.headers())


async def test_a_full_redis_keeps_sessions_going_and_refuses_new_ones_with_503(
    full_redis: RedisServer, prefix: str
) -> None:
    env = {
        "MCP_DB_REDIS_URL": full_redis.url,
        "MCP_DB_PREFIX": prefix,
        "MCP_DB_MIDDLEWARE": "1",
        "MCP_DB_LEASE_SECONDS": str(LEASE_SECONDS),
        "MCP_DB_HAND_OFF": "0",  # what is sent to `other` stays relayed to `owner`
    }
    # Addressed directly: the load balancer plays no part in this.
    owner, other = Node(env=env), Node(env=env)
    admin = aioredis.Redis.from_url(full_redis.url)
    offsets = [log_size(owner), log_size(other)]
    try:
        owner.start()
        other.start()
        async with httpx.AsyncClient(timeout=30) as http:
            session = await RawSession(http, owner.url).open()
            spare = await RawSession(http, owner.url).open()
            first = await whoami(http, other.url, session, 2)
            assert first.status_code == 200, first.text
            owner_pid = first.text.rsplit(" on ", 1)[1].split('"', 1)[0]

            Faults(full_redis, [owner, other]).fill_redis()
            # Several leases pass while Redis is full: the owner must have renewed its own.
            await asyncio.sleep(2.5 * LEASE_SECONDS)
            assert await admin.exists(f"{prefix}:n:node-{owner.process.pid}") == 1  # type: ignore[union-attr]

            # Requests in the session, relayed through the other node and sent straight to
            # the owner, are all served by the owner.
            for n in range(3, 9):
                url = other.url if n % 3 else owner.url
                reply = await whoami(http, url, session, n)
                assert reply.status_code == 200, (url, reply.status_code, reply.text)
                assert reply.text.rsplit(" on ", 1)[1].split('"', 1)[0] == owner_pid

            # A new session is refused on either node, saying why, and none is created.
            for url in (other.url, owner.url, other.url):
                refused = await RawSession(http, url).send_initialize()
                assert refused.status_code == 503, refused.text
                assert refused.headers["retry-after"] == "1"
                assert "mcp-session-id" not in refused.headers
                error = refused.json()["error"]
                assert "Redis is out of memory" in error["message"], error
            records = {f"{prefix}:s:{{{s.id}}}".encode() for s in (session, spare)}
            assert set(await admin.keys(f"{prefix}:s:*")) == records

            stats = [
                (await http.get(f"http://127.0.0.1:{n.port}/debug/stats")).json()
                for n in (owner, other)
            ]
            assert stats[0]["middleware"]["refused_full"] == 1
            assert stats[1]["middleware"]["refused_full"] == 2
            # The owner's events were refused: delivered live, counted as dropped.
            assert stats[0]["store"]["dropped_full"] > 0
            assert stats[0]["store"]["dropped"] >= stats[0]["store"]["dropped_full"]

            # DELETE still closes the session everywhere.
            deleted = await http.delete(other.url, headers=session.headers())
            assert deleted.status_code == 200, deleted.text
            gone = await whoami(http, owner.url, session, 9)
            assert gone.status_code == 404, gone.text

            # The owner dies: once its lease lapses, the other node takes its session over.
            owner.stop(kill=True)
            assert await spare.answered_by(other.url, retry_for=5) == str(other.process.pid)  # type: ignore[union-attr]

            # Once Redis has room, new sessions are admitted again.
            await admin.config_set("maxmemory", 0)
            again = await RawSession(http, other.url).open()
            assert again.id
        # Logged once per episode on each node, not once per request: the node that refused
        # two initializes logged the episode once, and its end once.
        log = log_since(other, offsets[1])
        assert log.count("new sessions get 503") == 1, log
        assert log.count("has room again") == 1, log
        assert log.count("cannot record session") == 0, log
        assert "Session owner went away" not in log
        # The control writes went through while Redis was full, on both nodes.
        both = log_since(owner, offsets[0]) + log
        for failed in ("cannot renew its lease", "cannot refresh", "cannot mark session"):
            assert failed not in both, both
    finally:
        await admin.aclose()
        owner.stop()
        other.stop()
