"""Redis killed and restarted under a live session: delivery goes on, nothing is lost."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import pytest
import redis

from tests import _messages as msgs
from tests._client import (
    AUTO_RESUME,
    client_session,
    kind,
    result_text,
    sse_events,
)
from tests._nodes import Node
from tests.support.redis_server import RedisServer

#: Expensive multi-node scenarios: once per SDK line (``make test`` runs them on the newest
#: 1.x and 2.x, not again on the oldest 1.x).
pytestmark = pytest.mark.multinode


async def read_sse_events(url: str, headers: dict[str, str], count: int) -> list[dict[str, str]]:
    """GETs an SSE stream and returns its first ``count`` events that carry data."""
    events: list[dict[str, str]] = []
    async with httpx.AsyncClient(timeout=10) as http:
        async with http.stream("GET", url, headers=headers) as response:
            assert response.status_code == 200, response.status_code
            async for event in sse_events(response):
                events.append(event)
                if len(events) == count:
                    return events
    return events


async def test_live_delivery_survives_a_redis_restart_and_nothing_is_lost(
    persistent_redis: RedisServer,
) -> None:
    node = Node(env={"MCP_DB_REDIS_URL": persistent_redis.url, "MCP_DB_PREFIX": "fault"}).start()
    try:
        n = 60
        seen: list[int] = []
        outage = asyncio.Event()

        def progressed(i: int) -> None:
            seen.append(i)
            if i == 10:
                persistent_redis.stop()  # kill -9, mid-stream
                outage.set()
            if i == 35:
                persistent_redis.start()

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            progressed(int(progress))

        async def on_log(params: Any) -> None:
            progressed(int(str(params.data).split()[-1]))

        async with client_session(
            node.url, logging_callback=None if AUTO_RESUME else on_log
        ) as session:
            args = {"n": n, "delay": 0.03}
            if AUTO_RESUME:
                result = await session.call_tool("steps", args, progress_callback=on_progress)
            else:
                result = await session.call_tool("steps", args)
            assert outage.is_set()
            assert result_text(result) == f"done {n}"
            assert seen == list(range(n)), "live delivery went on while Redis was down"

            # Once Redis is back, every event of the call is stored, in order...
            r = redis.Redis.from_url(persistent_redis.url)
            for _ in range(100):
                keys = [k for k in r.keys("fault:e:*") if len(r.xrange(k)) > n]
                if keys:
                    break
                await asyncio.sleep(0.05)
            assert len(keys) == 1, "the buffered events were written when Redis came back"
            entries = r.xrange(keys[0])
            kinds = [kind(f) for _, f in entries if kind(f) != b"p"]
            assert kinds == [b"n"] * n + [b"r"]

            # ...and the SDK replays all of them from the first event ID.
            key = keys[0].decode()
            session_id = key.split("{", 1)[1].split("}", 1)[0]
            stream = key.rsplit(":", 1)[1]
            first = f"{session_id}:{stream}:{entries[0][0].decode()}"
            headers = {
                "accept": "text/event-stream",
                "mcp-session-id": session_id,
                "mcp-protocol-version": "2025-11-25" if AUTO_RESUME else "2025-06-18",
                "last-event-id": first,
            }
            expected = len(kinds) if kind(entries[0][1]) == b"p" else len(kinds) - 1
            replayed = await read_sse_events(node.url, headers, expected)
            assert len(replayed) == expected
            assert '"result"' in replayed[-1]["data"]
            assert [e["id"] for e in replayed] == [
                f"{session_id}:{stream}:{eid.decode()}" for eid, f in entries[1:] if kind(f) != b"p"
            ]
    finally:
        node.stop()


async def test_buffer_bound_counts_drops_and_keeps_the_rest(
    persistent_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    from mcp_db import RedisEventStore

    async with RedisEventStore(
        persistent_redis.url, prefix="bound", buffer_max_events=5, timeout_seconds=1
    ) as store:
        view = store.for_session("s")
        first = await view.store_event("1", None)
        persistent_redis.stop()
        ids = [await view.store_event("1", msgs.notification(i)) for i in range(12)]
        assert len(set(ids)) == 12, "every event got an ID while Redis was down"
        stats = store.stats()
        assert stats["buffered"] == 5 and stats["dropped"] == 7
        persistent_redis.start()
        for _ in range(100):
            if store.stats()["buffered"] == 0:
                break
            await asyncio.sleep(0.05)
        assert store.stats()["flushed"] == 5
        got: list[Any] = []

        async def collect(event: Any) -> None:
            got.append(msgs.unwrap(event.message).params["progress"])

        assert await view.replay_events_after(first, collect) == "1"
        assert got == [0, 1, 2, 3, 4], "the first five, kept in order; the rest were dropped"

    # The Rust core's log lines reach Python logging under "mcp_db", at the right levels.
    records = [(r.name, r.levelname, r.getMessage()) for r in caplog.records]
    assert any(
        lvl == "ERROR" and "cannot store events" in m and persistent_redis.url[:-2] in m
        for _, lvl, m in records
    ), records
    assert any(lvl == "ERROR" and "buffer full" in m for _, lvl, m in records), records
    assert any(lvl == "WARNING" and "is back: wrote 5 events" in m for _, lvl, m in records)
    assert {name for name, _, _ in records} == {"mcp_db"}


async def test_with_redis_down_an_owner_serves_its_session_and_refuses_what_it_cannot_record(
    persistent_redis: RedisServer,
) -> None:
    """Redis down: the owner (its lease still good) serves its session; opening a session
    or closing one is refused with 503 and Retry-After and changes nothing, since no other
    node could learn of it. Redis back: both work."""
    from tests.test_resume_e2e import RawSession

    env = {
        "MCP_DB_REDIS_URL": persistent_redis.url,
        "MCP_DB_PREFIX": "outage",
        "MCP_DB_MIDDLEWARE": "1",
        "MCP_DB_LEASE_SECONDS": "30",
    }
    node = Node(env=env).start()
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call"}
    call["params"] = {"name": "echo", "arguments": {"text": "hi"}}

    async def sessions(http: httpx.AsyncClient) -> int:
        reply = await http.get(f"http://127.0.0.1:{node.port}/debug/sessions")
        return int(reply.json()["sessions"])

    try:
        async with httpx.AsyncClient(timeout=10) as http:
            session = await RawSession(http, node.url).initialize()
            persistent_redis.stop()

            initialized = await session.post(
                {"jsonrpc": "2.0", "method": "notifications/initialized"}
            )
            assert initialized.status_code == 202, initialized.text
            echoed = await session.post(call)
            assert echoed.status_code == 200 and '"hi"' in echoed.text, echoed.text

            other = await RawSession(http, node.url).send_initialize("late")
            assert other.status_code == 503 and other.headers["retry-after"], other.text
            assert "mcp-session-id" not in other.headers
            assert await sessions(http) == 1, "the refused session left nothing behind"

            closing = await http.delete(node.url, headers=session.headers())
            assert closing.status_code == 503 and closing.headers["retry-after"], closing.text
            assert (await session.post(call)).status_code == 200, "still open"

            persistent_redis.start()
            closed = await http.delete(node.url, headers=session.headers())
            assert closed.status_code == 200, closed.text
            assert (await session.post(call)).status_code == 404
            record = redis.Redis.from_url(persistent_redis.url, decode_responses=True).hgetall(
                f"outage:s:{{{session.id}}}"
            )
            assert record["state"] == "CLOSED", record
    finally:
        node.stop()


async def test_a_replay_as_redis_returns_includes_the_buffered_events_and_later_ones_follow_them(
    persistent_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Defect 1 of issue 11, at its root. Events stored while Redis was down wait in the
    writer's buffer, written on the writer's backoff. A replay that came between Redis
    returning and that write found none of them, and the priming event the SDK stores for
    the resumed stream then sorted after them: every later resume skipped them for good.
    A replay now has the buffer written first."""
    from mcp_db import RedisEventStore

    caplog.set_level(logging.DEBUG, logger="mcp_db")
    async with RedisEventStore(persistent_redis.url, prefix="settle", timeout_seconds=1) as store:
        view = store.for_session("s")
        first = await view.store_event("1", msgs.notification(0))
        persistent_redis.stop()
        for i in range(1, 8):
            await view.store_event("1", msgs.notification(i))
        # Four failed attempts to write the buffer double the writer's backoff to 1.6 s:
        # its next attempt comes well after Redis is back and the replay below has run.
        for _ in range(200):
            if sum("still unavailable" in r.getMessage() for r in caplog.records) >= 4:
                break
            await asyncio.sleep(0.05)
        persistent_redis.start()
        assert store.stats()["buffered"] == 7, "the writer has not written the buffer yet"

        got: list[int] = []

        async def collect(event: Any) -> None:
            got.append(msgs.unwrap(event.message).params["progress"])

        assert await view.replay_events_after(first, collect) == "1"
        assert got == list(range(1, 8)), "the replay carries every buffered event"
        assert store.stats()["buffered"] == 0

        # What the resumed stream stores next (its priming event first) comes after them.
        priming = await view.store_event("1", None)
        await view.store_event("1", msgs.notification(8))
        got.clear()
        assert await view.replay_events_after(priming, collect) == "1"
        assert got == [8]


async def test_a_replay_while_events_wait_for_redis_fails_like_redis_being_down(
    persistent_redis: RedisServer,
) -> None:
    """A replay that cannot have the buffer written raises, within the store's timeout, so
    the client retries rather than resuming past events that are not in Redis yet."""
    from mcp_db import RedisEventStore
    from mcp_db.errors import RedisUnavailableError

    async with RedisEventStore(persistent_redis.url, prefix="settle", timeout_seconds=1) as store:
        view = store.for_session("s")
        first = await view.store_event("1", msgs.notification(0))
        persistent_redis.stop()
        await view.store_event("1", msgs.notification(1))

        async def never(event: Any) -> None:
            raise AssertionError("nothing may be replayed")

        with pytest.raises(RedisUnavailableError):
            await asyncio.wait_for(view.replay_events_after(first, never), timeout=3)
        assert store.stats()["replay_errors"] == 1
        persistent_redis.start()
