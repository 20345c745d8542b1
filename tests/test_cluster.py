"""Several nodes behind nginx serve one session as if they were one server."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
import redis.asyncio as aioredis

from mcp_db._core import key_of
from tests._client import (
    AUTO_RESUME,
    PROTOCOL,
    client_session,
    owners_in_turn,
    result_text,
    sse_events,
)
from tests._cluster import Cluster
from tests._messages import steps_call
from tests._nodes import Node
from tests.support.redis_server import RedisServer
from tests.test_resume_e2e import RawSession


@pytest.fixture
def cluster(redis_server: RedisServer, prefix: str) -> Iterator[Cluster]:
    c = Cluster(redis_server, prefix, size=3, MCP_DB_LEASE_SECONDS="2").start()
    yield c
    c.stop()


PROTOCOLS = sorted({PROTOCOL, "2025-06-18"})


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_one_session_is_served_by_every_node(cluster: Cluster, protocol: str) -> None:
    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    async with client_session(cluster.url, protocol=protocol) as session:
        names: list[str] = []
        for _ in range(6):
            tools = await session.list_tools()
            assert {"steps", "echo", "whoami"} <= {t.name for t in tools.tools}
            names.append(result_text(await session.call_tool("whoami", {})))
            resource = await session.read_resource("note://greeting")
            assert resource.contents[0].text == "hello from a resource"
            prompt = await session.get_prompt("review", {"code": "x = 1"})
            assert "Please review: x = 1" in str(prompt.messages[0].content)
        if AUTO_RESUME:
            result = await session.call_tool("steps", {"n": 20}, progress_callback=on_progress)
            assert result_text(result) == "done 20"
            assert seen == list(range(20))
    client_name = {n.split(" on ")[0] for n in names}
    assert len(client_name) == 1, names
    # nginx spread the requests over every node; all of them ran on the session's owner,
    # one owner at a time: it may move once (a hand-off behind round robin, or a takeover
    # if its 2 s lease lapses on a loaded machine), never back.
    assert len(cluster.served_by()) == 3
    assert len(owners_in_turn(names)) <= 2, f"one owner at a time ran them all: {names}"


async def test_delete_through_one_node_gives_404_on_every_node(cluster: Cluster) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        session = await RawSession(http, cluster.url).open()
        assert await session.event_ids_of_call()  # served fine
        for node in cluster.nodes:  # every node serves it (two by relaying to the owner)
            response = await http.post(
                node.url,
                json={"jsonrpc": "2.0", "id": 5, "method": "tools/list"},
                headers=session.headers(),
            )
            assert response.status_code == 200, response.text
        assert sorted(cluster.session_counts()) == [0, 0, 1], "live state on the owner only"
        deleted = await http.delete(cluster.nodes[0].url, headers=session.headers())
        assert deleted.status_code == 200
        for node in cluster.nodes:
            response = await http.post(
                node.url,
                json={"jsonrpc": "2.0", "id": 6, "method": "tools/list"},
                headers=session.headers(),
            )
            assert response.status_code == 404
            assert response.json()["error"]["message"] == "Session not found"
    released = await _settles(cluster, [0, 0, 0])
    print(f"transports released on every node {released * 1000:.0f} ms after DELETE")
    assert released < 1.0


@pytest.mark.parametrize("forged", ["random", "uuid", "long", "foreign-prefix"])
async def test_forged_session_ids_get_404_everywhere_and_create_nothing(
    cluster: Cluster, forged: str
) -> None:
    session_id = {
        "random": "not-a-session",
        "uuid": uuid.uuid4().hex,
        "long": "a" * 900,
        "foreign-prefix": "00000000000000000000000000000000",
    }[forged]
    async with httpx.AsyncClient(timeout=10) as http:
        for node in cluster.nodes:
            for method, body in (
                ("POST", {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
                ("GET", None),
                ("DELETE", None),
            ):
                response = await http.request(
                    method,
                    node.url,
                    json=body,
                    headers={
                        "accept": "application/json, text/event-stream",
                        "mcp-session-id": session_id,
                        "mcp-protocol-version": PROTOCOL,
                    },
                )
                assert response.status_code == 404, (method, response.text)
    assert cluster.session_counts() == [0, 0, 0]


async def test_expired_sessions_get_404_everywhere(redis_server: RedisServer, prefix: str) -> None:
    cluster = Cluster(redis_server, prefix, size=2, MCP_DB_SESSION_TTL="1").start()
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            session = await RawSession(http, cluster.url).open()
            assert await session.event_ids_of_call()
            await asyncio.sleep(1.6)  # idle past the TTL
            for node in cluster.nodes:
                response = await http.post(
                    node.url,
                    json={"jsonrpc": "2.0", "id": 9, "method": "tools/list"},
                    headers=session.headers(),
                )
                assert response.status_code == 404
    finally:
        cluster.stop()


@pytest.mark.skipif(not AUTO_RESUME, reason="mcp 1.12 has no idle timeout")
async def test_a_session_reaped_for_idleness_comes_back_while_its_record_lives(
    redis_server: RedisServer, prefix: str
) -> None:
    # Records outlive the SDK's idle timer (by default they would expire with it).
    cluster = Cluster(
        redis_server, prefix, size=2, MCP_IDLE_TIMEOUT="0.5", MCP_DB_SESSION_TTL="60"
    ).start()
    try:
        # Plain HTTP: the SDK's client would hold a GET stream open, which is activity.
        async with httpx.AsyncClient(timeout=10) as http:
            session = await RawSession(http, cluster.url).open()
            for _ in range(2):
                assert await session.event_ids_of_call()
            assert sum(cluster.session_counts()) >= 1
            await asyncio.sleep(1.2)  # every node reaps its transport
            assert cluster.session_counts() == [0, 0]
            for _ in range(2):  # rebuilt from Redis on whichever node gets the request
                assert await session.event_ids_of_call()
    finally:
        cluster.stop()


async def test_the_creating_node_killed_mid_session_survivors_carry_on(cluster: Cluster) -> None:
    async with client_session(cluster.url) as session:
        first = result_text(await session.call_tool("whoami", {}))
        creator_pid = int(first.split(" on ")[1])
        victim = next(n for n in cluster.nodes if n.process and n.process.pid == creator_pid)
        victim.stop(kill=True)  # kill -9
        for i in range(6):
            assert (
                result_text(await session.call_tool("echo", {"text": f"after {i}"})) == f"after {i}"
            )
        answers = {result_text(await session.call_tool("whoami", {})) for _ in range(4)}
        assert all(int(a.split(" on ")[1]) != creator_pid for a in answers)


async def test_survivors_racing_to_take_over_one_session_agree_on_one_owner(
    cluster: Cluster, redis_server: RedisServer, prefix: str
) -> None:
    """Twelve requests for a killed owner's session, six on each survivor at once: they
    all wait out the lease, then race for the session (the claim in Redis between nodes,
    the rehydration lock within one). One takeover wins; every request is answered by the
    winner, and only the winner rebuilt the session."""
    victim, *survivors = cluster.nodes
    async with httpx.AsyncClient(timeout=30) as http:
        session = await RawSession(http, victim.url).open()
        victim.stop(kill=True)  # kill -9

        answers = await asyncio.gather(
            *(session.answered_by(survivors[n % 2].url) for n in range(12))
        )
    (winner,) = set(answers)
    assert winner in {str(n.process.pid) for n in survivors}  # type: ignore[union-attr]
    record = await _record(redis_server, prefix, session.id)
    assert record["epoch"] == "2", record  # created at epoch 1, taken over once
    counts = [
        httpx.get(f"http://127.0.0.1:{n.port}/debug/sessions").json()["sessions"] for n in survivors
    ]
    assert sorted(counts) == [0, 1], counts


async def _record(redis_server: RedisServer, prefix: str, session_id: str) -> dict[str, str]:
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        return await client.hgetall(key_of(prefix, "session", session_id))  # type: ignore[no-any-return]
    finally:
        await client.aclose()


@pytest.mark.multinode
async def test_many_sessions_round_robin_without_failures(cluster: Cluster) -> None:
    sessions, requests = 100, 20
    failures: list[str] = []
    limit = asyncio.Semaphore(20)

    async def one(http: httpx.AsyncClient, n: int) -> None:
        async with limit:
            session = await RawSession(http, cluster.url).open()
            for i in range(requests - 3):  # initialize, initialized and DELETE make 20
                response = await http.post(
                    cluster.url,
                    json={
                        "jsonrpc": "2.0",
                        "id": 10 + i,
                        "method": "tools/call",
                        "params": {"name": "echo", "arguments": {"text": f"{n}/{i}"}},
                    },
                    headers=session.headers(),
                )
                if response.status_code != 200 or f"{n}/{i}" not in response.text:
                    failures.append(f"{n}/{i}: {response.status_code} {response.text[:200]}")
            deleted = await http.delete(cluster.url, headers=session.headers())
            if deleted.status_code != 200:
                failures.append(f"{n}: DELETE {deleted.status_code}")

    limits = httpx.Limits(max_connections=40)
    async with httpx.AsyncClient(timeout=30, limits=limits) as http:
        await asyncio.gather(*(one(http, n) for n in range(sessions)))
    assert failures == []
    # Every node let go of every closed session (the bus tells them), so memory is bounded.
    assert await _settles(cluster, [0, 0, 0]) < 2.0


async def _settles(cluster: Cluster, expected: list[int], timeout: float = 5.0) -> float:
    """Seconds until every node holds ``expected`` transports (fails after ``timeout``)."""
    start = asyncio.get_running_loop().time()
    while (counts := cluster.session_counts()) != expected:
        elapsed = asyncio.get_running_loop().time() - start
        assert elapsed < timeout, f"session counts stuck at {counts}"
        await asyncio.sleep(0.01)
    return asyncio.get_running_loop().time() - start


@pytest.mark.skipif(not AUTO_RESUME, reason="mcp 1.12 has no session owners")
async def test_another_principal_gets_404_on_every_node(
    redis_server: RedisServer, prefix: str
) -> None:
    cluster = Cluster(redis_server, prefix, size=2, MCP_TEST_AUTH="1").start()
    try:
        bearer = {"authorization": "Bearer user-alice"}
        async with httpx.AsyncClient(timeout=10, headers=bearer) as alice:
            session = await RawSession(alice, cluster.url).open()
            body = {"jsonrpc": "2.0", "id": 3, "method": "tools/list"}
            for node in cluster.nodes:
                own = await alice.post(node.url, json=body, headers=session.headers())
                assert own.status_code == 200, own.text
                for other in ({"authorization": "Bearer user-mallory"},):
                    stolen = await alice.post(
                        node.url, json=body, headers={**session.headers(), **other}
                    )
                    assert stolen.status_code == 404, stolen.text
            counts = cluster.session_counts()
            assert sorted(counts) == [0, 1], "the other principal's requests built nothing"
    finally:
        cluster.stop()


async def test_a_stream_cut_by_kill_9_resumes_from_redis_on_a_survivor(cluster: Cluster) -> None:
    victim = cluster.nodes[0]
    async with httpx.AsyncClient(timeout=10) as http:
        session = await RawSession(http, victim.url).open()
        call = steps_call(200, 0.02, "p")
        seen: list[dict[str, str]] = []
        async with http.stream("POST", victim.url, json=call, headers=session.headers()) as stream:
            async for event in sse_events(stream):
                seen.append(event)
                if len(seen) == 5:
                    break
        await asyncio.sleep(0.3)  # the tool goes on storing events nobody reads
        victim.stop(kill=True)  # kill -9 mid-call
        last = seen[-1]["id"]
        headers = {**session.headers(), "accept": "text/event-stream", "last-event-id": last}
        replayed: list[dict[str, str]] = []
        # A survivor takes the session over once the dead node's 2 s lease has lapsed.
        with anyio.move_on_after(6):
            async with http.stream("GET", cluster.url, headers=headers) as stream:
                assert stream.status_code == 200
                async for event in sse_events(stream):
                    replayed.append(event)
    progress = [_step(json.loads(e["data"])) for e in seen + replayed]
    assert len(replayed) >= 5, "what the dead node stored before dying came back from Redis"
    assert progress == list(range(len(progress))), "exactly once, in order"


def _step(message: dict[str, Any]) -> int:
    """The step number of a ``steps`` notification (progress, or a log on mcp 1.12)."""
    params = message["params"]
    return int(params["progress"]) if "progress" in params else int(str(params["data"]).split()[-1])


async def test_requests_of_the_2026_era_pass_through_untouched(
    cluster: Cluster, redis_server: RedisServer, prefix: str
) -> None:
    # That era has no sessions, so mcp-db leaves its requests to the SDK: a node with the
    # middleware answers exactly as the same server without it.
    bare = Node(env={"MCP_DB_REDIS_URL": redis_server.url, "MCP_DB_PREFIX": prefix}).start()
    try:
        answers = []
        async with httpx.AsyncClient(timeout=10) as http:
            for url in (cluster.nodes[0].url, bare.url):
                response = await http.post(
                    url,
                    json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                    headers={
                        "accept": "application/json, text/event-stream",
                        "mcp-protocol-version": "2026-07-28",
                        "mcp-session-id": "forged",
                    },
                )
                answers.append((response.status_code, response.text))
        assert answers[0] == answers[1]
        assert cluster.session_counts() == [0, 0, 0]
    finally:
        bare.stop()


async def test_without_redis_a_node_serves_what_it_holds_and_refuses_the_rest(
    prefix: str,
) -> None:
    redis = RedisServer().start()
    cluster = Cluster(redis, prefix, size=2).start()
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            session = await RawSession(http, cluster.nodes[0].url).open()
            redis.stop()
            body = {"jsonrpc": "2.0", "id": 4, "method": "tools/list"}
            held = await http.post(cluster.nodes[0].url, json=body, headers=session.headers())
            assert held.status_code == 200, held.text
            elsewhere = await http.post(cluster.nodes[1].url, json=body, headers=session.headers())
            assert elsewhere.status_code == 503
            assert elsewhere.headers["retry-after"] == "1"
            redis.start()  # an empty Redis: the record is gone, so 404 once it answers again
            await asyncio.sleep(0.5)
            gone = await http.post(cluster.nodes[1].url, json=body, headers=session.headers())
            assert gone.status_code == 404
    finally:
        cluster.stop()
        redis.cleanup()


async def test_a_session_still_initializing_gets_the_answer_the_sdk_gives(
    cluster: Cluster, redis_server: RedisServer, prefix: str
) -> None:
    """Between the answer to ``initialize`` and ``notifications/initialized`` (or while the
    record is still INITIALIZING), every node answers a request as the bare SDK does."""
    bare = Node(env={"MCP_DB_REDIS_URL": redis_server.url, "MCP_DB_PREFIX": f"{prefix}-bare"})
    bare.start()
    admin = aioredis.Redis.from_url(redis_server.url)
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            answers = []
            for urls, forced in (([bare.url], False), ([n.url for n in cluster.nodes], True)):
                session = await RawSession(http, urls[0]).initialize()
                if forced:
                    key = f"{prefix}:s:{{{session.id}}}"
                    await admin.hset(key, "state", "INITIALIZING")
                for url in urls:
                    response = await http.post(
                        url,
                        json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
                        headers=session.headers(),
                    )
                    answers.append((response.status_code, _tool_names(response.text)))
    finally:
        await admin.aclose()
        bare.stop()
    if AUTO_RESUME:  # 1.2x and 2.x serve requests before notifications/initialized
        assert answers[0][0] == 200 and "echo" in answers[0][1], answers[0]
    assert answers[1:] == [answers[0]] * 3, answers


def _tool_names(body: str) -> list[str]:
    for line in body.splitlines():
        if line.startswith("data:") and line[5:].strip():
            message = json.loads(line[5:])
            return _names(message)
    return _names(json.loads(body))


def _names(message: dict[str, Any]) -> list[str]:
    if "error" in message:
        return [f"error {message['error'].get('code')}"]
    return sorted(t["name"] for t in message.get("result", {}).get("tools", []))


async def test_a_body_past_the_limit_is_refused_with_413_and_changes_nothing(
    cluster: Cluster,
) -> None:
    """A request relayed to the owner travels whole, so it is bounded (4 MiB, the SDK's
    default limit); past it the relaying node answers 413 and relays nothing. An initialize
    past it is refused before any session exists (mcp 1.12 has no limit of its own)."""
    big = "x" * (5 * 1024 * 1024)
    owner, other = cluster.nodes[0], cluster.nodes[1]
    async with httpx.AsyncClient(timeout=30) as http:
        session = await RawSession(http, owner.url).open()
        relayed = await http.post(
            other.url,
            headers=session.headers(),
            json={
                "jsonrpc": "2.0",
                "id": 9,
                "method": "tools/call",
                "params": {"name": "echo", "arguments": {"text": big}},
            },
        )
        assert relayed.status_code == 413, relayed.text[:200]
        assert relayed.json()["error"]["message"] == "Request body too large"
        before = cluster.session_counts()
        opening = await RawSession(http, other.url).send_initialize(big)
        assert opening.status_code == 413 and "mcp-session-id" not in opening.headers
        assert cluster.session_counts() == before
        # The session goes on, from any node.
        echo = {"jsonrpc": "2.0", "id": 10, "method": "tools/call"}
        echo["params"] = {"name": "echo", "arguments": {"text": "hi"}}
        answer = await http.post(other.url, headers=session.headers(), json=echo)
        assert answer.status_code == 200 and '"hi"' in answer.text
