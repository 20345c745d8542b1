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
from mcp_db._core import Refusal, Transition
from tests.support.redis_server import RedisServer

TTL = 60_000
INIT = json.dumps({"protocolVersion": "2025-11-25", "clientInfo": {"name": "c", "version": "1"}})


def told(outcome: Transition) -> tuple[object, ...]:
    """A transition's outcome in one comparable tuple: ``(True, version)``, or
    ``(False, refusal, version, state)``."""
    if outcome.done:
        return (True, outcome.version)
    return (False, outcome.refusal, outcome.version, outcome.state or "")


@pytest.fixture
async def records(redis_server: RedisServer, prefix: str) -> AsyncIterator[Any]:
    async with RedisEventStore(redis_server.url, prefix=prefix) as store:
        yield store.deployment.sessions()


async def test_a_record_walks_the_state_machine(records: Any) -> None:
    assert await records.create("s1", "node-a", "alice", INIT, TTL) is True
    record = await records.lookup("s1", TTL)
    assert record.state == "INITIALIZING" and record.version == 1
    assert (record.node, record.principal, json.loads(record.init)) == (
        "node-a",
        "alice",
        json.loads(INIT),
    )
    done = await records.transition("s1", "INITIALIZED", TTL, fields=[("protocol", "2025-11-25")])
    assert told(done) == (True, 2)
    assert told(await records.transition("s1", "ACTIVE", TTL)) == (True, 3)
    assert told(await records.transition("s1", "ACTIVE", TTL)) == (True, 4)
    assert told(await records.transition("s1", "CLOSED", TTL)) == (True, 5)
    refused = await records.transition("s1", "ACTIVE", TTL)
    assert told(refused) == (False, Refusal.REFUSED, 5, "CLOSED")
    record = await records.lookup("s1", TTL)
    assert (record.state, record.version, record.protocol) == ("CLOSED", 5, "2025-11-25")


async def test_refusals_change_nothing(records: Any) -> None:
    await records.create("s1", "n", "", INIT, TTL)
    before = await records.lookup("s1", TTL)
    assert await records.create("s1", "other", "mallory", "{}", TTL) is False
    refused = await records.transition("s1", "ACTIVE", TTL)
    assert told(refused) == (False, Refusal.REFUSED, 1, "INITIALIZING")
    conflict = await records.transition("s1", "INITIALIZED", TTL, expected_version=7)
    assert told(conflict) == (False, Refusal.CONFLICT, 1, "INITIALIZING")
    assert await records.lookup("s1", TTL) == before
    assert told(await records.transition("nope", "ACTIVE", TTL)) == (False, Refusal.MISSING, 0, "")
    assert await records.lookup("nope", TTL) is None
    with pytest.raises(ConfigError, match="managed by the state machine"):
        await records.transition("s1", "INITIALIZED", TTL, fields=[("version", "99")])
    with pytest.raises(ValueError, match="unknown session state"):
        await records.transition("s1", "DONE", TTL)


async def test_compare_and_set_lets_exactly_one_of_many_nodes_win(
    redis_server: RedisServer, prefix: str
) -> None:
    stores = [RedisEventStore(redis_server.url, prefix=prefix) for _ in range(4)]  # 4 "nodes"
    nodes = [s.deployment.sessions() for s in stores]
    await nodes[0].create("s1", "n0", "", INIT, TTL)
    outcomes = await asyncio.gather(
        *(
            n.transition("s1", "INITIALIZED", TTL, expected_version=1)
            for n in nodes
            for _ in range(10)
        )
    )
    winners = [told(o) for o in outcomes if o.done]
    assert winners == [(True, 2)]
    losers = [told(o) for o in outcomes if not o.done]
    assert losers == [(False, Refusal.CONFLICT, 2, "INITIALIZED")] * 39
    # Unconditional updates from every node at once: none is lost.
    await asyncio.gather(*(n.transition("s1", "ACTIVE", TTL) for n in nodes for _ in range(25)))
    record = await nodes[1].lookup("s1", TTL)
    assert record.version == 2 + 4 * 25
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
