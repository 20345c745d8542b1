"""Session records and their state machine, on a real redis-server (groundwork for the
SessionMiddleware of the next milestone)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis as redis_py

from mcp_db import ConfigError, RedisEventStore
from tests.support.redis_server import RedisServer

TTL = 60_000
INIT = json.dumps({"protocolVersion": "2025-11-25", "clientInfo": {"name": "c", "version": "1"}})


@pytest.fixture
async def records(redis_server: RedisServer, prefix: str) -> AsyncIterator[Any]:
    async with RedisEventStore(redis_server.url, prefix=prefix) as store:
        yield store._core.sessions()


async def test_a_record_walks_the_state_machine(records: Any) -> None:
    assert await records.create("s1", "node-a", "alice", INIT, TTL) is True
    record = await records.lookup("s1", TTL)
    assert record["state"] == "INITIALIZING" and record["version"] == "1"
    assert (record["node"], record["principal"], json.loads(record["init"])) == (
        "node-a",
        "alice",
        json.loads(INIT),
    )
    assert await records.transition(
        "s1", "INITIALIZED", TTL, fields=[("protocol", "2025-11-25")]
    ) == (True, 2)
    assert await records.transition("s1", "ACTIVE", TTL) == (True, 3)
    assert await records.transition("s1", "ACTIVE", TTL) == (True, 4)
    assert await records.transition("s1", "CLOSED", TTL) == (True, 5)
    assert await records.transition("s1", "ACTIVE", TTL) == (False, "refused", 5, "CLOSED")
    record = await records.lookup("s1", TTL)
    assert (record["state"], record["version"], record["protocol"]) == ("CLOSED", "5", "2025-11-25")


async def test_refusals_change_nothing(records: Any) -> None:
    await records.create("s1", "n", "", INIT, TTL)
    before = await records.lookup("s1", TTL)
    assert await records.create("s1", "other", "mallory", "{}", TTL) is False
    assert await records.transition("s1", "ACTIVE", TTL) == (False, "refused", 1, "INITIALIZING")
    assert await records.transition("s1", "INITIALIZED", TTL, expected_version=7) == (
        False,
        "conflict",
        1,
        "INITIALIZING",
    )
    assert await records.lookup("s1", TTL) == before
    assert await records.transition("nope", "ACTIVE", TTL) == (False, "missing", 0, "")
    assert await records.lookup("nope", TTL) is None
    with pytest.raises(ConfigError, match="managed by the state machine"):
        await records.transition("s1", "INITIALIZED", TTL, fields=[("version", "99")])
    with pytest.raises(ValueError, match="unknown session state"):
        await records.transition("s1", "DONE", TTL)


async def test_compare_and_set_lets_exactly_one_of_many_nodes_win(
    redis_server: RedisServer, prefix: str
) -> None:
    stores = [RedisEventStore(redis_server.url, prefix=prefix) for _ in range(4)]  # 4 "nodes"
    nodes = [s._core.sessions() for s in stores]
    await nodes[0].create("s1", "n0", "", INIT, TTL)
    outcomes = await asyncio.gather(
        *(
            n.transition("s1", "INITIALIZED", TTL, expected_version=1)
            for n in nodes
            for _ in range(10)
        )
    )
    winners = [o for o in outcomes if o[0]]
    assert winners == [(True, 2)]
    assert [o for o in outcomes if not o[0]] == [(False, "conflict", 2, "INITIALIZED")] * 39
    # Unconditional updates from every node at once: none is lost.
    await asyncio.gather(*(n.transition("s1", "ACTIVE", TTL) for n in nodes for _ in range(25)))
    record = await nodes[1].lookup("s1", TTL)
    assert record["version"] == str(2 + 4 * 25)
    for s in stores:
        await s.close()


async def test_idle_ttl_slides_on_lookup_but_tombstones_keep_theirs(
    records: Any, redis_server: RedisServer, prefix: str
) -> None:
    raw = redis_py.Redis.from_url(redis_server.url)
    await records.create("s1", "n", "", INIT, 1_000)
    assert 0 < raw.pttl(f"{prefix}:s:{{s1}}") <= 1_000
    await records.lookup("s1", 50_000)
    assert raw.pttl(f"{prefix}:s:{{s1}}") > 1_000
    await records.transition("s1", "CLOSED", 2_000)
    await records.lookup("s1", 50_000)
    assert raw.pttl(f"{prefix}:s:{{s1}}") <= 2_000, "a CLOSED tombstone expires on its own TTL"
