"""The relay's Rust core against a real redis-server: two nodes' ends in one process, so
each property can be driven precisely (at-most-once hand-off, backpressure, disconnects,
dead peers). The end-to-end behaviour through nginx is in test_live_state.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis as redis_py

from mcp_db import McpDbError, RedisEventStore
from mcp_db._core import key_layout
from mcp_db._relay import serve
from tests._relay_parts import forwarded, next_part, part, request, take
from tests.support.redis_server import RedisServer

# The Rust relay's frames between two ends in one process, not the SDK: see tests/conftest.py.
pytestmark = pytest.mark.one_sdk_line


@pytest.fixture(params=["redis-server", "redis-cluster"])
async def store(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[RedisEventStore]:
    """The relay on one redis-server, and on a Redis Cluster (where all of its pub/sub goes
    through one node, see crates/core/src/cluster.rs)."""
    redis = request.getfixturevalue(request.param.replace("-", "_"))
    async with RedisEventStore(redis.url, prefix=prefix) as s:
        yield s


async def _pair(store: RedisEventStore, window: int = 64) -> tuple[Any, Any]:
    for node in ("owner", "relayer"):  # alive: the sweep ends requests of dead peers
        await store.deployment.ownership(node, 60_000).beat("{}")
    owner = store.deployment.relay("owner", window=window, sweep_ms=100)
    relayer = store.deployment.relay("relayer", window=window, sweep_ms=100)
    assert await owner.ready(2000) and await relayer.ready(2000)
    return owner, relayer


async def _take(owner: Any) -> tuple[Any, ...]:
    """The next relayed request, which this node has claimed (the relay gives no other: as
    the middleware does, nothing of a request runs before that)."""
    return tuple(request(await take(owner)))


async def _frames(forward: Any) -> list[Any]:
    out = []
    while True:
        frame = await next_part(forward)
        out.append(frame)
        if frame[0] in ("end", "cut"):
            return out


async def test_a_request_and_its_streamed_response(store: RedisEventStore) -> None:
    owner, relayer = await _pair(store)
    forwarding = asyncio.ensure_future(relayer.forward("owner", "s", '{"m":1}', b"body", 2000))
    request_id, sender, session, head, body = await _take(owner)
    assert (sender, session, head, body) == ("relayer", "s", '{"m":1}', b"body")
    outcome, forward = forwarded(await forwarding)
    assert outcome == "accepted"
    owner.start(request_id, 200, [(b"content-type", b"text/event-stream")])
    for i in range(5):
        assert owner.send(request_id, f"data: {i}\n\n".encode()) is None
    owner.end(request_id, True)
    frames = await _frames(forward)
    assert frames[0] == ("head", 200, [(b"content-type", b"text/event-stream")])
    assert [f[1] for f in frames[1:-1]] == [f"data: {i}\n\n".encode() for i in range(5)]
    assert frames[-1] == ("end", True)
    assert owner.stats()["in_flight_served"] == 0
    assert relayer.stats()["in_flight_forwarded"] == 0


async def test_nobody_listening_is_unreachable(store: RedisEventStore) -> None:
    relayer = store.deployment.relay("relayer", sweep_ms=100)
    assert await relayer.ready(2000)
    assert forwarded(await relayer.forward("nobody", "s", "{}", b"", 2000)) == ("unreachable", None)


async def test_an_owner_that_never_takes_the_request_times_out_and_never_runs_it(
    store: RedisEventStore,
) -> None:
    owner, relayer = await _pair(store)
    # The owner listens but its event loop never asks for work (a stuck node).
    assert forwarded(await relayer.forward("owner", "s", "{}", b"late", 300)) == ("timeout", None)
    # When it finally asks, the request is not its to run (the relayer's claim won): the
    # relay drops it and gives none.
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(owner.next_requests(), 0.5)
    assert owner.stats()["served"] == 0
    assert relayer.stats()["timeouts"] == 1
    assert owner.stats()["in_flight_served"] == 0, "a lost claim leaves nothing behind"


async def test_a_whole_response_travels_in_one_frame(store: RedisEventStore) -> None:
    owner, relayer = await _pair(store)
    forwarding = asyncio.ensure_future(relayer.forward("owner", "s", "{}", b"", 2000))
    request_id, *_ = await _take(owner)
    outcome, forward = forwarded(await forwarding)
    assert outcome == "accepted"
    headers = [(b"content-type", b"application/json"), (b"x-a", b"1")]
    owner.respond(request_id, 404, headers, b'{"error":"gone"}')
    owner.end(request_id, True)  # what serve() always does last: a no-op after respond
    assert await next_part(forward) == ("whole", 404, headers, b'{"error":"gone"}')
    assert forward.try_next() is None, "nothing follows a whole response"
    assert owner.stats()["in_flight_served"] == 0
    assert relayer.stats()["in_flight_forwarded"] == 0


def _sse_app(pauses: list[float]) -> Any:
    """An ASGI app answering with an event stream: an event, then after each pause another,
    then the end (what the SDK sends for a POST)."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})  # fmt: skip
        await send({"type": "http.response.body", "body": b"data: 0\n\n", "more_body": True})
        for i, pause in enumerate(pauses, 1):
            await asyncio.sleep(pause)
            event = f"data: {i}\n\n".encode()
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


async def _serve_relayed(store: RedisEventStore, app: Any) -> list[tuple[Any, float]]:
    """``app`` run by ``_relay.serve`` for a POST relayed between two real relay ends; the
    parts the relaying node got, in order, each with the seconds it took to come."""
    owner, relayer = await _pair(store)
    head = '{"method":"POST","path":"/mcp","raw_path":"/mcp","query_string":"","headers":[]}'
    forwarding = asyncio.ensure_future(relayer.forward("owner", "s", head, b"{}", 2000))
    served = asyncio.ensure_future(serve(app, owner, await take(owner), None))
    started = time.monotonic()
    outcome, forward = forwarded(await forwarding)
    assert outcome == "accepted"
    parts = [(part(forward.try_next() or await asyncio.wait_for(forward.next(), 5)), 0.0)]
    while parts[-1][0][0] not in ("whole", "end", "cut"):
        parts.append((await next_part(forward), time.monotonic() - started))
    await served
    return parts


async def test_a_short_event_stream_is_relayed_in_one_frame(store: RedisEventStore) -> None:
    # One result and the end, as most POSTs answer: one frame back, not head, data and end.
    parts = [p for p, _ in await _serve_relayed(store, _sse_app([]))]
    assert parts == [("whole", 200, [(b"content-type", b"text/event-stream")], b"data: 0\n\n")]


async def test_a_slow_event_stream_is_relayed_as_it_comes(store: RedisEventStore) -> None:
    # The first event may wait for the head's delay, no longer: it is out (with the head)
    # while the app still sleeps before its second.
    timed = await _serve_relayed(store, _sse_app([0.5, 0.01]))
    assert [p for p, _ in timed] == [
        ("head", 200, [(b"content-type", b"text/event-stream")]),
        ("chunk", b"data: 0\n\n"),
        ("chunk", b"data: 1\n\n"),
        ("chunk", b"data: 2\n\n"),
        ("end", True),
    ]
    first_event, last_event = timed[1][1], timed[2][1]
    assert first_event < 0.4 < last_event


async def test_backpressure_holds_the_owner_until_the_client_catches_up(
    store: RedisEventStore,
) -> None:
    owner, relayer = await _pair(store, window=8)
    forwarding = asyncio.ensure_future(relayer.forward("owner", "s", "{}", b"", 2000))
    request_id, *_ = await _take(owner)
    outcome, forward = forwarded(await forwarding)
    assert outcome == "accepted"
    owner.start(request_id, 200, [])
    waits = [owner.send(request_id, b"x" * 10) for _ in range(8)]
    assert waits[:7] == [None] * 7, "room in the window"
    blocked = waits[7]
    assert blocked is not None, "the eighth unacknowledged chunk waits"
    blocked_task = asyncio.ensure_future(blocked)
    await asyncio.sleep(0.2)
    assert not blocked_task.done(), "the relayer's client has consumed nothing"
    frames = [part(await forward.next()) for _ in range(5)]  # start + 4 chunks: credit for 4
    assert frames[0][0] == "head"
    assert await asyncio.wait_for(blocked_task, 2) is True
    owner.end(request_id, True)


async def test_a_client_disconnect_reaches_the_owner(store: RedisEventStore) -> None:
    owner, relayer = await _pair(store)
    forwarding = asyncio.ensure_future(relayer.forward("owner", "s", "{}", b"", 2000))
    request_id, *_ = await _take(owner)
    _, forward = forwarded(await forwarding)
    disconnected = asyncio.ensure_future(owner.disconnected(request_id))
    await asyncio.sleep(0.1)
    assert not disconnected.done()
    forward.cancel()
    await asyncio.wait_for(disconnected, 2)


async def test_a_dead_owner_ends_the_relayed_response(store: RedisEventStore) -> None:
    owner, relayer = await _pair(store)
    forwarding = asyncio.ensure_future(relayer.forward("owner", "s", "{}", b"", 2000))
    request_id, *_ = await _take(owner)
    _, forward = forwarded(await forwarding)
    owner.start(request_id, 200, [])
    owner.close()  # the owner's subscription goes away, as when its process dies
    frames = await _frames(forward)
    assert frames[0][0] == "head"
    assert frames[-1][0] == "cut", frames


async def test_a_draining_owner_takes_no_new_requests(store: RedisEventStore) -> None:
    owner, relayer = await _pair(store)
    owner.drain()
    await asyncio.sleep(0.2)
    assert forwarded(await relayer.forward("owner", "s", "{}", b"", 2000)) == ("unreachable", None)


async def test_an_owner_found_gone_after_it_heard_a_request_can_never_run_it(
    redis_server: RedisServer, prefix: str
) -> None:
    """The owner heard the request but its event loop had not asked for it yet when its
    subscription went away. The relayer's sweep finds it gone; before saying the request
    never ran, the relayer takes its claim, so an owner that comes back cannot run it."""
    async with RedisEventStore(redis_server.url, prefix=prefix) as store:
        owner, relayer = await _pair(store)
        forwarding = asyncio.ensure_future(relayer.forward("owner", "s", "{}", b"", 5000))
        await asyncio.sleep(0.3)  # heard, not taken
        assert not forwarding.done()
        owner.close()
        assert forwarded(await asyncio.wait_for(forwarding, 5)) == ("unreachable", None)
        with redis_py.Redis.from_url(redis_server.url, decode_responses=True) as redis:
            pattern = dict(key_layout(prefix))["claim"]
            claims = [redis.get(key) for key in redis.scan_iter(match=pattern)]
        assert claims == ["gave-up"], claims


async def test_a_request_whose_publish_failed_is_settled_by_its_claim(prefix: str) -> None:
    """The PUBLISH of a request went out but its answer did not come back in time (Redis
    paused past the timeout): the owner hears the request later. The relayer cannot know
    whether it will run, so it takes the request's claim (queued behind the PUBLISH) and
    raises. The owner, hearing the request once Redis resumes, loses the claim: the request
    never runs, and the caller may not send it again either."""
    redis = RedisServer().start()
    try:
        async with RedisEventStore(redis.url, prefix=prefix, timeout_seconds=0.3) as store:
            owner, relayer = await _pair(store)
            with redis_py.Redis.from_url(redis.url) as admin:
                admin.execute_command("CLIENT", "PAUSE", 1500, "ALL")
            with pytest.raises(McpDbError):
                await relayer.forward("owner", "s", "{}", b"", 2000)
            # Once Redis resumes (1.5 s), the owner's claim loses: nothing comes out.
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(owner.next_requests(), 2.5)
            assert owner.stats()["served"] == 0
    finally:
        redis.cleanup()


async def test_a_cancelled_wait_for_a_request_takes_none(store: RedisEventStore) -> None:
    """A node that stops waiting for relayed requests (its task cancelled) must not leave a
    wait behind that would take, and claim, the next request for nobody. The request may
    come before the loop gets round to stopping the wait (here the loop is kept busy while
    it comes): the next wait gets it all the same."""
    owner, relayer = await _pair(store)
    waiting = asyncio.ensure_future(owner.next_requests())
    await asyncio.sleep(0.05)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting  # raises at once: the loop has not run since the cancel
    forwarding = asyncio.ensure_future(relayer.forward("owner", "s", "{}", b"next", 2000))
    time.sleep(0.5)  # the request is published, taken and claimed on the I/O thread meanwhile
    _, _, _, _, body = await _take(owner)
    assert body == b"next"
    outcome, _ = forwarded(await forwarding)
    assert outcome == "accepted"
