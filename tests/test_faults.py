"""Faults under live sessions, on the direct and the relayed path (tests/_faults.py).

Each test is one case of docs/failure-modes.md: what the client sees while the fault lasts
and once it is over.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator

import httpx
import pytest

from tests._client import AUTO_RESUME, client_session, result_text
from tests._faults import PATHS, Paths
from tests.support.redis_server import RedisServer
from tests.test_resume_e2e import RawSession

#: Expensive multi-node scenarios: once per SDK line (``make test`` runs them on the newest
#: 1.x and 2.x, not again on the oldest 1.x).
pytestmark = pytest.mark.multinode

# The SSE ``retry`` of the servers here: clients resume this long after a stream breaks.
RETRY_MS = "500"

needs_auto_resume = pytest.mark.skipif(
    not AUTO_RESUME, reason="mcp 1.12 clients resume only by hand, with a resumption token"
)


@pytest.fixture(params=PATHS)
def paths(request: pytest.FixtureRequest, persistent_redis: RedisServer) -> Iterator[Paths]:
    deployment = Paths(
        persistent_redis, request.param, prefix="faults", MCP_RETRY_MS=RETRY_MS
    ).start()
    yield deployment
    deployment.stop()


async def call_across_a_redis_outage(
    paths: Paths, outage: float, *, n: int = 80, delay: float = 0.05, kill_at: int = 20
) -> tuple[str, list[int]]:
    """Calls ``steps(n)``; Redis is killed at notification ``kill_at`` (about 1 s in) and
    started again ``outage`` seconds later. Returns the result and every progress
    notification the client saw, in the order it saw them."""
    seen: list[int] = []
    restarted = asyncio.Event()
    loop = asyncio.get_running_loop()

    async def outage_then_restart() -> None:
        await asyncio.sleep(outage)
        await loop.run_in_executor(None, paths.faults.restart_redis)
        restarted.set()

    restart: asyncio.Task[None] | None = None

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        nonlocal restart
        seen.append(int(progress))
        if int(progress) == kill_at and restart is None:
            paths.faults.kill_redis()
            restart = asyncio.create_task(outage_then_restart())

    try:
        async with client_session(paths.url) as session:
            result = await asyncio.wait_for(
                session.call_tool("steps", {"n": n, "delay": delay}, progress_callback=on_progress),
                timeout=outage + 30,
            )
    finally:
        if restart is not None:
            await restart
    assert restarted.is_set(), "the outage happened during the call"
    return result_text(result), seen


async def admitting(url: str, seconds: float = 15) -> None:
    """Waits until ``initialize`` succeeds: a node's first Redis command after an outage
    may fail while its connection comes back, and the client's ``initialize`` would then
    get 503 with ``Retry-After``, which SDK clients do not retry."""
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=10) as http:
        while True:
            reply = await RawSession(http, url).send_initialize("probe")
            if reply.status_code == 200 or time.monotonic() > deadline:
                assert reply.status_code == 200, reply.text
                return
            assert reply.headers.get("retry-after"), reply.text
            await asyncio.sleep(0.2)


async def test_with_redis_down_a_resume_on_another_node_ends_at_once_and_the_rest_gets_503(
    persistent_redis: RedisServer,
) -> None:
    """The owner's SDK answers a resumption it cannot replay (Redis down) with a stream that
    ends at once, and SDK clients reconnect after such a stream however long the outage; a
    503 counts as a failed try, and they give up after two. So a node that cannot relay a
    resumption to the owner answers it as the owner would, on any node."""
    deployment = Paths(persistent_redis, "relayed", prefix="down").start()
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            session = await RawSession(http, deployment.url).open()
            deployment.faults.kill_redis()
            resume = await http.get(
                deployment.url,
                headers=session.headers(accept="text/event-stream", **{"last-event-id": "x"}),
            )
            assert resume.status_code == 200, resume.text
            assert resume.headers["content-type"].startswith("text/event-stream")
            assert resume.text == ""
            call = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
            refused = await session.post(call)
            assert refused.status_code == 503 and refused.headers["retry-after"], refused.text
    finally:
        deployment.stop()


@needs_auto_resume
async def test_a_call_resumed_while_redis_recovers_gets_every_event_once_in_order(
    paths: Paths,
) -> None:
    """Defect 1 of issue 11: a resume that reached the owner before it had written the
    events it buffered during the outage replayed nothing; the priming event the SDK then
    stored sorted after the buffered events, so every later resume skipped them, the
    call's result included."""
    text, seen = await call_across_a_redis_outage(paths, outage=3.0)
    assert text == "done 80", paths.logs()
    assert seen == list(range(80)), paths.logs()


@pytest.mark.slow
@needs_auto_resume
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("outage", [2.0, 4.0, 8.0])
async def test_resume_across_redis_outages_ten_times(paths: Paths, outage: float) -> None:
    """The issue's acceptance run: ten calls per outage length (``pytest -m slow``)."""
    runs = int(os.environ.get("MCP_DB_FAULT_RUNS", "10"))
    for run in range(runs):
        await admitting(paths.url)
        text, seen = await call_across_a_redis_outage(paths, outage=outage)
        assert text == "done 80", f"run {run}: {paths.logs()}"
        assert seen == list(range(80)), f"run {run}: {seen}"


async def test_a_redis_pause_longer_than_the_timeout_fails_in_time_and_leaves_no_orphan(
    persistent_redis: RedisServer,
) -> None:
    """Defect 9 of issue 11: under ``CLIENT PAUSE``, ``initialize`` and a relayed call got
    their 503 only after two round trips' timeouts, and the create Redis ran once the pause
    ended left an INITIALIZING record of a session the client never learned (``mcp-db
    sessions list`` showed it)."""
    timeout, pause = 1.0, 3.0
    deployment = Paths(
        persistent_redis, "relayed", prefix="pause", MCP_DB_TIMEOUT_SECONDS=str(timeout)
    ).start()
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call"}
    call["params"] = {"name": "echo", "arguments": {"text": "hi"}}
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            kept = await RawSession(http, deployment.url).open()
            assert (await kept.post(call)).status_code == 200  # relayed: the owner is known
            deployment.faults.pause_redis(int(pause * 1000))
            started = time.monotonic()
            refused, relayed = await asyncio.gather(
                RawSession(http, deployment.url).send_initialize("paused"), kept.post(call)
            )
            took = time.monotonic() - started
            assert refused.status_code == 503 and refused.headers["retry-after"], refused.text
            assert "mcp-session-id" not in refused.headers
            assert relayed.status_code == 503 and relayed.headers["retry-after"], relayed.text
            assert took < timeout + 0.5, f"503s after {took:.2f} s, the bound is {timeout} s"

            await asyncio.sleep(pause - took + 1.5)  # the pause ends; queued writes run
            r = deployment.faults.client()
            states = {k: r.hget(k, "state") for k in r.keys("pause:s:*")}
            assert states == {f"pause:s:{{{kept.id}}}".encode(): b"ACTIVE"}, states
    finally:
        deployment.stop()


async def test_a_redis_outage_longer_than_the_lease_leaves_sessions_with_their_live_owners(
    persistent_redis: RedisServer,
) -> None:
    """Defect 8 of issue 11: every heartbeat key expired during the outage, so the first
    request relayed after Redis came back found the owner "dead" and took its session
    over (epoch 1 -> 2 -> 3 as nodes fought), fencing the live owner's events. A node
    that could not reach Redis is not dead: for a lease after its own outage a node does
    not count a missing heartbeat as death."""
    lease = 2.0
    deployment = Paths(
        persistent_redis, "relayed", prefix="lapse", MCP_DB_LEASE_SECONDS=str(lease)
    ).start()
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            session = await RawSession(http, deployment.url).open()
            owner = deployment.nodes[0].process
            assert owner is not None
            assert await session.answered_by(deployment.url) == str(owner.pid), "relayed"

            with deployment.faults.redis_down(lease * 2):
                pass  # every heartbeat key expires meanwhile
            answered = [await session.answered_by(deployment.url, retry_for=15) for _ in range(8)]
            assert set(answered) == {str(owner.pid)}, deployment.logs()
            record = deployment.faults.client().hgetall(f"lapse:s:{{{session.id}}}")
            assert record[b"owner"].endswith(str(owner.pid).encode()), record
            assert record[b"epoch"] == b"1", record
    finally:
        deployment.stop()
