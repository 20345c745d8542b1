"""Ownership follows the traffic. Three nodes behind nginx hashing on ``Mcp-Session-Id``
(``examples/nginx-hash.conf``): ``initialize`` carries no session ID and lands on any node,
which owns the session; every later request lands on the node the hash picks, which relays
it until the owner hands the session over. Then nothing is relayed any more.

What is relayed is counted by the relay itself (``relay.forwarded`` in each node's
``/debug/stats``); who owns a session at which epoch is read from its record in Redis; the
node nginx picked for each request is in its access log."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import redis.asyncio as aioredis

from mcp_db._core import key_of
from mcp_db.middleware.routing import HAND_OFF_CALM
from tests._client import AUTO_RESUME, client_session, result_text, sse_events
from tests._cluster import Cluster
from tests._messages import steps_call
from tests._nodes import Node
from tests.support.nginx import HASH, Nginx
from tests.support.redis_server import RedisServer
from tests.test_cluster import _step
from tests.test_resume_e2e import RawSession

pytestmark = pytest.mark.multinode
#: Raw HTTP sessions: the routing and the balancer are the subject, not the SDK's client. They
#: run on the newest SDK line only; the SDK client's own test runs on every line.
ONE_LINE = pytest.mark.one_sdk_line


@pytest.fixture
def cluster(redis_server: RedisServer, prefix: str) -> Iterator[Cluster]:
    c = Cluster(redis_server, prefix, size=3, balancer="nginx-hash", MCP_DB_LEASE_SECONDS="2")
    yield c.start()
    c.stop()


def _counters(cluster: Cluster) -> list[dict[str, int]]:
    """The middleware's counters of every live node."""
    return [
        httpx.get(f"http://127.0.0.1:{n.port}/debug/stats").json()["middleware"]
        for n in cluster.nodes
        if n.process is not None and n.process.poll() is None
    ]


def _total(cluster: Cluster, key: str) -> int:
    return sum(c.get(key, 0) for c in _counters(cluster))


async def _owner(redis: RedisServer, prefix: str, session_id: str) -> tuple[str, int]:
    """The owner and epoch the session's record names."""
    admin = aioredis.Redis.from_url(redis.url, decode_responses=True)
    try:
        owner, epoch = await admin.hmget(f"{prefix}:s:{{{session_id}}}", ["owner", "epoch"])
    finally:
        await admin.aclose()
    return str(owner), int(epoch)


def _node_name(cluster: Cluster, port: str) -> str:
    """The node ID (``node-<pid>``, tests/servers/app.py) of the node on ``port``."""
    (node,) = [n for n in cluster.nodes if str(n.port) == port]
    assert node.process is not None
    return f"node-{node.process.pid}"


def _upstream(cluster: Cluster, n: int) -> str:
    """The node (its ID) nginx sent its ``n``-th request to (from 0). nginx logs a request
    once it is over, which may be just after its client has the answer: wait for it."""
    assert isinstance(cluster.lb, Nginx)
    deadline = time.monotonic() + 5
    while len(logged := cluster.lb.upstreams()) <= n:
        assert time.monotonic() < deadline, f"nginx logged {len(logged)} requests, not {n + 1}"
        time.sleep(0.01)
    return _node_name(cluster, logged[n].rsplit(":", 1)[1])


async def _ping(session: RawSession) -> None:
    ping = {"jsonrpc": "2.0", "id": next(session.request_ids), "method": "ping"}
    reply = await session.post(ping)
    assert reply.status_code == 200, reply.text
    assert "mcp-db-moved" not in reply.headers, "the hand-off never reaches the client"


async def _sessions_owned_elsewhere(
    http: httpx.AsyncClient, cluster: Cluster, redis: RedisServer, prefix: str, count: int
) -> list[tuple[RawSession, str]]:
    """``count`` sessions whose ``initialize`` landed on another node than the one the hash
    picks for them, each with the node picked, before any request of theirs was relayed."""
    found: list[tuple[RawSession, str]] = []
    for _ in range(20 * count):
        assert isinstance(cluster.lb, Nginx)
        before = len(cluster.lb.upstreams())  # requests go one at a time here
        session = await RawSession(http, cluster.url).initialize()
        owner, _ = await _owner(redis, prefix, session.id)
        await session.post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        picked = _upstream(cluster, before + 1)  # the notification's node
        if picked != owner:
            found.append((session, picked))
            if len(found) == count:
                return found
    raise AssertionError(f"only {len(found)} sessions opened on another node than their hash")


async def _owned_elsewhere_with_owner(
    http: httpx.AsyncClient, cluster: Cluster, redis: RedisServer, prefix: str
) -> tuple[RawSession, str, str, Any]:
    """One session owned elsewhere than the node the hash picks (``_sessions_owned_elsewhere``):
    the session, the picked node, its owner's ID and the owner's ``Node``."""
    ((session, picked),) = await _sessions_owned_elsewhere(http, cluster, redis, prefix, 1)
    first_owner, _ = await _owner(redis, prefix, session.id)
    (owner_node,) = [n for n in cluster.nodes if _node_name(cluster, str(n.port)) == first_owner]
    return session, picked, first_owner, owner_node


@ONE_LINE
async def test_behind_a_hash_relaying_stops_after_the_first_requests(
    cluster: Cluster, redis_server: RedisServer, prefix: str
) -> None:
    async with httpx.AsyncClient(timeout=20) as http:
        sessions = await _sessions_owned_elsewhere(http, cluster, redis_server, prefix, 6)
        for session, _ in sessions:
            await _ping(session)  # the second request in a row from the picked node
        settled = _total(cluster, "relay.forwarded")
        for session, picked in sessions:
            assert await _owner(redis_server, prefix, session.id) == (picked, 2), "handed over"
        for _ in range(10):
            for session, picked in sessions:
                await _ping(session)
                pid = await session.answered_by(cluster.url)
                assert f"node-{pid}" == picked, "served where the balancer sends it"
        assert _total(cluster, "relay.forwarded") == settled, "nothing relayed any more"
        # Each session: the notification relayed, then the ping the owner handed over for.
        assert settled == 2 * len(sessions)
        assert _total(cluster, "handed_off") == _total(cluster, "handed_in") == len(sessions)
        assert _total(cluster, "rehydrated") == len(sessions)


@pytest.mark.skipif(not AUTO_RESUME, reason="mcp 1.12's client does not listen again")
async def test_the_sdk_client_s_session_moves_with_its_get_stream_and_stays(
    cluster: Cluster,
) -> None:
    """The SDK's client keeps a GET stream open. Its protocol (2025-11-25) has clients
    listen again when the server ends that stream, so an owner with only that stream open
    hands the session over; the client listens again at its new owner, and nothing of the
    session is relayed from then on."""
    for _ in range(10):  # until a session opens on another node than its hash picks
        async with client_session(cluster.url) as session:
            ran_on = []
            for i in range(3):
                assert result_text(await session.call_tool("echo", {"text": f"{i}"})) == f"{i}"
                ran_on.append(result_text(await session.call_tool("whoami", {})))
            if not _total(cluster, "handed_off"):
                continue  # it opened where the hash sends it: nothing to move
            await asyncio.sleep(1.5)  # the client listens again after its 1 s delay
            settled = _total(cluster, "relay.forwarded")
            for i in range(5):
                ran_on.append(result_text(await session.call_tool("whoami", {})))
                assert result_text(await session.call_tool("echo", {"text": f"{i}"})) == f"{i}"
            assert _total(cluster, "relay.forwarded") == settled, "nothing relayed any more"
            assert len(set(ran_on[-5:])) == 1, ran_on
            assert _total(cluster, "handed_off") == 1
            return
    raise AssertionError("no session was handed off")


@ONE_LINE
def test_the_recipe_hashes_as_the_tests_do() -> None:
    recipe = (Path(__file__).parent.parent / "examples" / "nginx-hash.conf").read_text()
    assert HASH.strip() in recipe


@ONE_LINE
async def test_a_hand_off_waits_for_a_call_in_flight_and_nothing_runs_twice(
    cluster: Cluster, redis_server: RedisServer, prefix: str
) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        session, picked, first_owner, owner_node = await _owned_elsewhere_with_owner(
            http, cluster, redis_server, prefix
        )
        # A request straight to the owner breaks the streak the notification began: the
        # call is then the first of a new one, and runs on the owner.
        direct = RawSession(http, owner_node.url)
        direct.id = session.id
        await _ping(direct)
        messages: list[dict[str, Any]] = []

        async def call() -> None:
            headers = session.headers()
            async with http.stream("POST", cluster.url, json=steps_call(20, 0.1, "hand-off"),
                                   headers=headers) as response:  # fmt: skip
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    if line.startswith("data:"):
                        messages.append(json.loads(line[5:]))

        task = asyncio.create_task(call())
        while not messages:
            await asyncio.sleep(0.02)
        for _ in range(4):  # requests in a row from the picked node, while the call runs
            await _ping(session)
            assert await _owner(redis_server, prefix, session.id) == (first_owner, 1)
        await task
        steps = [_step(m) for m in messages if m.get("method") is not None]
        assert steps == list(range(20)), "every step once, in order"
        results = [m for m in messages if "result" in m]
        assert len(results) == 1 and "done 20" in json.dumps(results[0]), results
        await _ping(session)  # the call is over: this one moves the session
        assert await _owner(redis_server, prefix, session.id) == (picked, 2)
        relayed = _total(cluster, "relay.forwarded")
        await _ping(session)
        assert _total(cluster, "relay.forwarded") == relayed


@ONE_LINE
async def test_after_kill_9_a_nodes_sessions_move_once_to_where_the_ring_sends_them(
    cluster: Cluster, redis_server: RedisServer, prefix: str
) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        sessions = []
        for _ in range(9):
            session = await RawSession(http, cluster.url).open()
            for _ in range(2):
                await _ping(session)
            sessions.append(session)
        before = {s.id: await _owner(redis_server, prefix, s.id) for s in sessions}
        owners = {owner for owner, _ in before.values()}
        victim = next(n for n in cluster.nodes if f"node-{n.process.pid}" in owners)  # type: ignore[union-attr]
        victim_name = f"node-{victim.process.pid}"  # type: ignore[union-attr]
        os.kill(victim.process.pid, signal.SIGKILL)  # type: ignore[union-attr]
        victim.process.wait()  # type: ignore[union-attr]
        for _ in range(3):
            for session in sessions:
                await session.answered_by(cluster.url, retry_for=10)
        after = {s.id: await _owner(redis_server, prefix, s.id) for s in sessions}
        for session_id, (owner, epoch) in before.items():
            if owner == victim_name:
                assert after[session_id][0] != victim_name
                assert after[session_id][1] == epoch + 1, "taken over once, not handed on"
            else:
                assert after[session_id] == (owner, epoch), "the ring did not move it"
        # And the survivors serve them where nginx now sends them: nothing is relayed.
        relayed = _total(cluster, "relay.forwarded")
        for session in sessions:
            await _ping(session)
        assert _total(cluster, "relay.forwarded") == relayed


@ONE_LINE
async def test_behind_round_robin_a_session_moves_at_most_once_in_40_requests(
    redis_server: RedisServer, prefix: str
) -> None:
    cluster = Cluster(redis_server, prefix, size=3).start()
    try:
        async with httpx.AsyncClient(timeout=20) as http:
            sessions = [await RawSession(http, cluster.url).open() for _ in range(8)]
            for _ in range(39):  # with the notification, 40 requests after initialize
                await asyncio.gather(*(_ping(s) for s in sessions))
            epochs = [(await _owner(redis_server, prefix, s.id))[1] for s in sessions]
        handed = _total(cluster, "handed_off")
        assert all(epoch <= 2 for epoch in epochs), epochs  # one hand-off at most each
        assert handed == sum(epoch - 1 for epoch in epochs), (handed, epochs)
        assert handed == _total(cluster, "handed_in")
        assert _total(cluster, "taken_over") == 0
    finally:
        cluster.stop()


@ONE_LINE
async def test_with_json_responses_a_call_once_answered_holds_its_session_no_longer(
    redis_server: RedisServer, prefix: str
) -> None:
    """With answers in JSON bodies rather than event streams, a call holds its session
    until its answer, and no longer: two relayed requests after it move the session."""
    cluster = Cluster(redis_server, prefix, size=2, MCP_DB_JSON_RESPONSE="1").start()
    try:
        owner, other = cluster.nodes
        async with httpx.AsyncClient(timeout=20) as http:
            session = await RawSession(http, owner.url).open()
            first_owner = (await _owner(redis_server, prefix, session.id))[0]
            call = await session.post(steps_call(3, 0.01, "json"))
            assert call.headers["content-type"].startswith("application/json"), call.headers
            assert "done 3" in call.text, call.text
            session.url = other.url
            for _ in range(2):
                await _ping(session)
            moved_to, epoch = await _owner(redis_server, prefix, session.id)
        assert (moved_to != first_owner, epoch) == (True, 2), "handed to the other node"
        assert _total(cluster, "handed_off") == 1
    finally:
        cluster.stop()


async def _result_stored(redis: RedisServer, prefix: str, session_id: str, stream: str) -> None:
    """Waits until the last entry of the session's event stream ``stream`` (a POST's: its
    request ID) is the call's result: the call is over, on whichever node it ran."""
    key = key_of(prefix, "events", session_id, stream)
    admin = aioredis.Redis.from_url(redis.url, decode_responses=True)
    try:
        deadline = time.monotonic() + 10
        while not (last := await admin.xrevrange(key, count=1)) or "r" not in last[0][1]:
            assert time.monotonic() < deadline, f"the call's result was never stored: {last}"
            await asyncio.sleep(0.02)
    finally:
        await admin.aclose()


@ONE_LINE
@pytest.mark.parametrize("cut_by", ["client", "server"])
async def test_a_stream_cut_before_a_hand_off_resumes_at_the_new_owner_exactly_once(
    cluster: Cluster, redis_server: RedisServer, prefix: str, cut_by: str
) -> None:
    """A call's stream on the session's owner ends before its answer: the client cuts it,
    or the server closes it (SSE polling, ``close_sse_stream``). The call runs on: the
    session moves to the node the hash picks only once the call is answered, and the client
    resumes there with ``Last-Event-ID``: the new owner replays the rest of the stream from
    Redis, every event once."""
    async with httpx.AsyncClient(timeout=30) as http:
        session, picked, first_owner, owner_node = await _owned_elsewhere_with_owner(
            http, cluster, redis_server, prefix
        )
        # Straight to the owner, which runs it; then the stream ends after 5 events.
        n, call = 20, steps_call(20, 0.05, "resumed", cut_at=4 if cut_by == "server" else -1)
        seen: list[dict[str, str]] = []
        # The server closes a call's stream for clients of protocol 2025-11-25 and later.
        headers = session.headers(**{"mcp-protocol-version": "2025-11-25"})
        async with http.stream("POST", owner_node.url, json=call, headers=headers) as stream:
            assert stream.status_code == 200
            async for event in sse_events(stream):
                seen.append(event)
                if len(seen) == 5 and cut_by == "client":
                    break
        # The server's close may overtake its last notification: that one is replayed.
        assert 4 <= len(seen) <= 5, seen
        # The call runs on without its stream. Requests from the picked node meanwhile are
        # relayed, and the session stays: handing it on would end the call midway.
        for _ in range(3):
            await _ping(session)
        assert await _owner(redis_server, prefix, session.id) == (first_owner, 1)
        assert _total(cluster, "handed_off") == 0
        await _result_stored(redis_server, prefix, session.id, str(call["id"]))
        for _ in range(4):  # once the call is answered, the next one moves the session
            await _ping(session)
            if await _owner(redis_server, prefix, session.id) == (picked, 2):
                break
        assert await _owner(redis_server, prefix, session.id) == (picked, 2), "handed over"
        relayed = _total(cluster, "relay.forwarded")
        assert isinstance(cluster.lb, Nginx)
        logged = len(cluster.lb.upstreams())
        # The client resumes through the balancer, which sends it to the new owner.
        headers = {**headers, "accept": "text/event-stream", "last-event-id": seen[-1]["id"]}
        replayed: list[dict[str, str]] = []
        with anyio.move_on_after(5) as reading:
            async with http.stream("GET", cluster.url, headers=headers) as stream:
                assert stream.status_code == 200
                async for event in sse_events(stream):
                    replayed.append(event)
                    if "result" in json.loads(event["data"]):
                        # The stream stays open: a while longer for anything sent twice.
                        reading.deadline = min(reading.deadline, anyio.current_time() + 0.3)
    assert _upstream(cluster, logged) == picked
    assert _total(cluster, "relay.forwarded") == relayed, "the new owner replayed it itself"
    messages = [json.loads(e["data"]) for e in seen + replayed]
    steps = [_step(m) for m in messages if m.get("method") is not None]
    assert steps == list(range(n)), "every step once, in order, none before Last-Event-ID again"
    results = [m for m in messages if "result" in m]
    assert len(results) == 1 and f"done {n}" in json.dumps(results[0]), results
    assert "result" in messages[-1]
    ids = [e["id"] for e in seen + replayed]
    assert len(set(ids)) == len(ids), ids


async def _target(http: httpx.AsyncClient, balancer: Nginx, session_id: str) -> str:
    """The node (its ID) ``balancer`` sends the session's requests to. nginx hashes the
    header whatever the path, and ``/debug/pid`` is outside the MCP endpoint: no session
    is touched."""
    url = f"http://127.0.0.1:{balancer.port}/debug/pid"
    reply = await http.get(url, headers={"mcp-session-id": session_id})
    return f"node-{reply.json()['pid']}"


@ONE_LINE
async def test_a_node_added_to_the_ring_moves_only_the_sessions_the_ring_moves(
    cluster: Cluster, redis_server: RedisServer, prefix: str
) -> None:
    """nginx's consistent hash (ketama) sends a session to another node when one joins only
    if the session now falls to the new node: those sessions are handed to it once, and the
    others stay where they are, at the same epoch."""
    assert isinstance(cluster.lb, Nginx)
    added = Node(cluster.nodes[0].app, env=cluster.nodes[0].env)
    # One of the cluster's nodes from now on: its counters count, and node IDs resolve.
    cluster.nodes.append(added)
    backends = [f"127.0.0.1:{node.port}" for node in cluster.nodes]
    # Another nginx over the four nodes tells where the grown ring will send each session
    # (the same servers hash the same), so that sessions can be opened until one will move.
    grown = Nginx(backends, hash=True)
    try:
        added.start()
        added_id = _node_name(cluster, str(added.port))
        grown.start()
        async with httpx.AsyncClient(timeout=20) as http:
            sessions: list[RawSession] = []
            will_target: dict[str, str] = {}
            while len(sessions) < 12 or added_id not in will_target.values():
                assert len(sessions) < 60, "no session of 60 hashes to the added node"
                session = await RawSession(http, cluster.url).open()
                for _ in range(2):
                    await _ping(session)
                sessions.append(session)
                will_target[session.id] = await _target(http, grown, session.id)
            grown.stop()
            before = {s.id: await _owner(redis_server, prefix, s.id) for s in sessions}
            for session in sessions:
                assert before[session.id][0] == await _target(http, cluster.lb, session.id)
                if will_target[session.id] == added_id and before[session.id][1] > 1:
                    # Handed in when it opened: it may move again after that many requests.
                    for _ in range(HAND_OFF_CALM):
                        await _ping(session)
            counts = {k: _total(cluster, k) for k in ("relay.forwarded", "handed_off", "handed_in")}
            cluster.lb.restart(backends)  # the fourth node joins the ring
            for session in sessions:
                target = await _target(http, cluster.lb, session.id)
                assert target == will_target[session.id]
                assert target in (before[session.id][0], added_id), (
                    "ketama moves keys to the added node only"
                )
            for session in sessions:
                for _ in range(2):
                    await _ping(session)
            after = {s.id: await _owner(redis_server, prefix, s.id) for s in sessions}
            moved = [s for s in sessions if will_target[s.id] == added_id]
            for session_id, (owner, epoch) in before.items():
                if will_target[session_id] == added_id:
                    assert after[session_id] == (added_id, epoch + 1), "handed over once"
                else:
                    assert after[session_id] == (owner, epoch), "the ring did not move it"
            # Each moved session: two requests relayed by the added node, the second handed over.
            assert _total(cluster, "relay.forwarded") == counts["relay.forwarded"] + 2 * len(moved)
            assert _total(cluster, "handed_off") == counts["handed_off"] + len(moved)
            assert _total(cluster, "handed_in") == counts["handed_in"] + len(moved)
            assert _total(cluster, "taken_over") == 0
            relayed = _total(cluster, "relay.forwarded")
            for session in sessions:
                await _ping(session)
            assert _total(cluster, "relay.forwarded") == relayed, "nothing relayed any more"
    finally:
        grown.stop()
        added.stop()
