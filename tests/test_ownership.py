"""Ownership against a real redis-server: leases, takeover by compare-and-set, and the
epoch fencing record writes and event appends of a node that lost its sessions."""

from __future__ import annotations

import asyncio
import json
import os
import signal

import httpx
import pytest
import redis.asyncio as aioredis

from mcp_db import RedisEventStore
from mcp_db._core import ClaimOutcome, Refusal
from mcp_db.errors import ConfigError
from tests._messages import notification
from tests._nodes import Node
from tests.support.redis_server import RedisServer
from tests.test_resume_e2e import RawSession


@pytest.fixture
async def store(redis_server: RedisServer, prefix: str) -> RedisEventStore:
    async with RedisEventStore(redis_server.url, prefix=prefix) as s:
        yield s


async def _record(store: RedisEventStore, session: str, node: str) -> None:
    records = store.deployment.sessions()
    assert await records.create(session, node, "", json.dumps({"capabilities": {}}), 60_000)


async def test_heartbeat_release_and_liveness(store: RedisEventStore) -> None:
    a = store.deployment.ownership("node-a", 500)
    b = store.deployment.ownership("node-b", 500)
    assert await a.beat("{}") is False, "a first heartbeat finds no lease"
    assert await a.beat("{}") is True, "a renewal finds it"
    assert await b.alive("node-a") is True
    await asyncio.sleep(0.7)
    assert await b.alive("node-a") is False, "an unrenewed lease lapses"
    assert await a.beat("{}") is False, "and the node learns it lapsed"
    await a.release()
    assert await b.alive("node-a") is False, "released at once"
    with pytest.raises(ConfigError):
        store.deployment.ownership("node-c", 10)


async def test_takeover_is_a_compare_and_set_on_owner_and_epoch(store: RedisEventStore) -> None:
    await _record(store, "s1", "node-a")
    b = store.deployment.ownership("node-b", 5000)
    c = store.deployment.ownership("node-c", 5000)
    # Two nodes saw (node-a, 1) and race: exactly one wins, the other sees the winner.
    results = await asyncio.gather(
        b.claim("s1", "node-a", 1, 60_000), c.claim("s1", "node-a", 1, 60_000)
    )
    winners = [r for r in results if r.claimed]
    losers = [r for r in results if not r.claimed]
    assert len(winners) == 1 and len(losers) == 1
    won = winners[0]
    assert won.epoch == 2 and won.outcome == ClaimOutcome.CLAIMED
    lost = losers[0]
    assert (lost.owner, lost.epoch, lost.outcome) == (won.owner, 2, ClaimOutcome.MOVED)
    # The winner claiming again holds it; a stale expectation is refused.
    winner = b if won.owner == "node-b" else c
    again = await winner.claim("s1", "node-a", 1, 60_000)
    assert (again.claimed, again.owner, again.epoch, again.outcome) == (
        True, won.owner, 2, ClaimOutcome.HELD
    )  # fmt: skip
    assert (await b.claim("missing", "x", 1, 60_000)).outcome == ClaimOutcome.MISSING
    records = store.deployment.sessions()
    await records.transition("s1", "INITIALIZED", 60_000)
    await records.transition("s1", "CLOSED", 60_000)
    assert (await c.claim("s1", won.owner, 2, 60_000)).outcome == ClaimOutcome.CLOSED


async def test_an_owner_hands_a_session_to_another_node_by_compare_and_set(
    store: RedisEventStore,
) -> None:
    await _record(store, "h1", "node-a")
    a = store.deployment.ownership("node-a", 5000)
    b = store.deployment.ownership("node-b", 5000)
    handed = await a.hand_off("h1", "node-b", 1, 60_000)
    assert (handed.outcome, handed.owner, handed.epoch) == (ClaimOutcome.CLAIMED, "node-b", 2)
    record = await store.deployment.sessions().lookup("h1", 60_000)
    assert record is not None and (record.owner, record.epoch) == ("node-b", 2)
    # node-a no longer owns it at epoch 1: a second hand-off of its own is refused, and
    # node-b's claim finds it holds the session already.
    again = await a.hand_off("h1", "node-c", 1, 60_000)
    assert (again.outcome, again.owner, again.epoch) == (ClaimOutcome.MOVED, "node-b", 2)
    assert (await a.hand_off("h1", "node-b", 1, 60_000)).outcome == ClaimOutcome.HELD
    assert (await b.claim("h1", "node-a", 1, 60_000)).outcome == ClaimOutcome.HELD
    assert (await a.hand_off("gone", "node-b", 1, 60_000)).outcome == ClaimOutcome.MISSING


async def test_a_stale_epoch_cannot_write_the_record(store: RedisEventStore) -> None:
    await _record(store, "s2", "node-a")
    records = store.deployment.sessions()
    assert (await records.transition("s2", "INITIALIZED", 60_000, epoch=1)).done is True
    b = store.deployment.ownership("node-b", 5000)
    assert (await b.claim("s2", "node-a", 1, 60_000)).claimed is True
    refused = await records.transition("s2", "CLOSED", 60_000, epoch=1)
    assert (refused.done, refused.refusal, refused.version, refused.state) == (
        False, Refusal.FENCED, 2, "INITIALIZED"
    )  # fmt: skip
    assert (await records.transition("s2", "CLOSED", 60_000, epoch=2)).done is True


async def test_a_stale_epoch_cannot_append_events(
    store: RedisEventStore, redis_server: RedisServer, prefix: str
) -> None:
    await _record(store, "s3", "node-a")
    view = store.for_session("s3")
    store.deployment.fence("s3", 1)
    kept = [await view.store_event("1", notification(i)) for i in range(3)]
    b = store.deployment.ownership("node-b", 5000)
    assert (await b.claim("s3", "node-a", 1, 60_000)).claimed is True  # node-b took it over
    for i in range(3, 6):
        await view.store_event("1", notification(i))  # node-a does not know yet
    await asyncio.sleep(0.1)
    stats = store.stats()
    assert stats["fenced"] == 3 and stats["stored"] == 3, stats
    admin = aioredis.Redis.from_url(redis_server.url)
    try:
        entries = await admin.xrange(f"{prefix}:e:{{s3}}:1")
    finally:
        await admin.aclose()
    assert len(entries) == 3, "only what the owner wrote before the takeover is stored"
    sent: list[object] = []

    async def collect(event: object) -> None:
        sent.append(event)

    assert await view.replay_events_after(kept[0], collect) == "1"
    assert len(sent) == 2
    # Unfenced again (the node owns nothing): appends are unconditional.
    store.deployment.fence("s3", None)
    await view.store_event("1", notification(9))
    assert store.stats()["stored"] == 4


async def _whoami(http: httpx.AsyncClient, url: str, session: RawSession) -> str:
    body = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "whoami"}}
    response = await http.post(url, json=body, headers=session.headers())
    assert response.status_code == 200, response.text
    assert "mcp-db-moved" not in response.headers, "the refusal never reaches the client"
    return response.text.split(" on ")[1].split('"')[0]


async def test_a_stale_owner_refuses_as_moved_and_the_relayer_finds_the_new_one(
    redis_server: RedisServer, prefix: str
) -> None:
    """A node relays a session's requests straight to the owner it last saw. If that node
    lost the session while it was away (and the relaying node missed the news), it refuses
    without running anything, and the relaying node reads the record and relays anew."""
    env = {
        "MCP_DB_REDIS_URL": redis_server.url,
        "MCP_DB_PREFIX": prefix,
        "MCP_DB_MIDDLEWARE": "1",
        "MCP_DB_LEASE_SECONDS": "1",
        "MCP_DB_HAND_OFF": "0",  # B's requests in a row would move the session to B
    }
    a, b, c = (Node(env=env).start() for _ in range(3))
    admin = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        async with httpx.AsyncClient(timeout=20) as http:
            session = await RawSession(http, a.url).open()
            pid_a, pid_c = str(a.process.pid), str(c.process.pid)
            assert await _whoami(http, b.url, session) == pid_a, "relayed to the owner"
            os.kill(a.process.pid, signal.SIGSTOP)  # A is away: its lease lapses
            try:
                await asyncio.sleep(1.5)
                # C took the session over and B never heard (as if the bus message was lost).
                key = f"{prefix}:s:{{{session.id}}}"
                await admin.hset(key, mapping={"owner": f"node-{pid_c}", "epoch": 2})
                assert await _whoami(http, c.url, session) == pid_c, "C rebuilt it"
            finally:
                os.kill(a.process.pid, signal.SIGCONT)
            for _ in range(3):
                assert await _whoami(http, b.url, session) == pid_c, "B found the new owner"
            assert await _whoami(http, a.url, session) == pid_c, "A relays to it too"
    finally:
        await admin.aclose()
        for node in (a, b, c):
            node.stop()
