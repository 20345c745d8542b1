"""mcp-db on Redis deployments other than one plain server: a Redis Cluster of three
primaries (the multi-node MCP scenarios run on it too, in test_live_state.py), and TLS with
a user and password (``rediss://user:pass@…``). Both are started by the suite."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from types import SimpleNamespace

import httpx
import pytest
import redis as redis_py

from mcp_db import RedisEventStore, RedisUnavailableError
from mcp_db._core import key_of, parse_key
from tests import _messages as msgs
from tests._client import client_session, result_text
from tests._cluster import Cluster
from tests._redis_deployments import RedisCluster, TlsRedis

SESSIONS, ROUNDS = 40, 5


@pytest.fixture(scope="module")
def tls_redis() -> Iterator[TlsRedis]:
    server = TlsRedis().start()
    yield server
    server.cleanup()


def _messages() -> list[object]:
    return [m for i in range(ROUNDS) for m in msgs.mixed(i)]


async def _store_and_replay(store: RedisEventStore) -> None:
    """Events of many sessions at once (one write pipeline spans many slots on a cluster),
    each session's replayed whole and in order."""
    views = [store.for_session(f"s{i:03d}-{'x' * 24}") for i in range(SESSIONS)]

    async def write(view: object) -> list[str]:
        first = await view.store_event("1", None)  # type: ignore[attr-defined]
        for message in _messages():
            await view.store_event("1", message)  # type: ignore[attr-defined]
        return [first]

    firsts = await asyncio.gather(*(write(v) for v in views))
    for view, (first,) in zip(views, firsts, strict=True):
        got: list[object] = []

        async def collect(event: object, got: list[object] = got) -> None:
            got.append(event)

        assert await view.replay_events_after(first, collect) == "1"
        assert [msgs.sdk_json(e.message) for e in got] == [  # type: ignore[attr-defined]
            msgs.sdk_json(m) for m in _messages()
        ]


async def test_events_of_many_sessions_store_and_replay_on_a_cluster(
    redis_cluster: RedisCluster, prefix: str
) -> None:
    async with RedisEventStore(redis_cluster.url, prefix=prefix) as store:
        await _store_and_replay(store)
        assert store.stats()["stored"] == SESSIONS * (1 + len(_messages()))
    with redis_cluster.client() as redis:
        keys = list(redis.scan_iter(match=f"{prefix}:e:*"))
        assert len(keys) == SESSIONS
        slots = {redis.keyslot(k) for k in keys}
        assert len({redis.get_node_from_key(k).port for k in keys}) == 3  # spread over all
        assert len(slots) > 3
        # A session's record and events share a slot, so its scripts can touch both.
        session = "s000-" + "x" * 24
        assert redis.keyslot(key_of(prefix, "session", session)) == redis.keyslot(
            key_of(prefix, "events", session, "1")
        )


def _records(redis_url: str, prefix: str) -> dict[str, dict[str, str]]:
    """Every session record under ``prefix``, by session ID."""
    kind = redis_py.RedisCluster if _is_cluster(redis_url) else redis_py.Redis
    with kind.from_url(redis_url, decode_responses=True) as redis:
        found = {}
        for key in redis.scan_iter(match=f"{prefix}:s:*"):
            parsed = parse_key(prefix, key)
            assert parsed is not None and parsed[0] == "session", key
            found[parsed[1]] = redis.hgetall(key)
        return found


def _is_cluster(redis_url: str) -> bool:
    with redis_py.Redis.from_url(redis_url) as redis:
        return bool(redis.info("cluster").get("cluster_enabled"))


async def _one_session_over(deployment: Cluster, redis_url: str, prefix: str) -> None:
    """A session whose requests land on every node (nginx round robin): the nodes share its
    record and events, and relay to its owner over pub/sub. Then it is closed, and every
    node answers 404 for it."""
    async with client_session(deployment.url) as session:
        answers = {result_text(await session.call_tool("whoami", {})) for _ in range(6)}
        assert len(answers) == 1, answers  # the one owner answers, whichever node got it
    # The client closed the session on its way out (a DELETE).
    ((session_id, record),) = _records(redis_url, prefix).items()
    assert record["state"] == "CLOSED", record
    async with httpx.AsyncClient() as http:
        for node in deployment.nodes:
            reply = await http.post(
                node.url,
                headers={
                    "mcp-session-id": session_id,
                    "accept": "application/json, text/event-stream",
                    "content-type": "application/json",
                },
                json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            )
            assert reply.status_code == 404, (node.port, reply.status_code)
    assert len(deployment.served_by()) == len(deployment.nodes)


async def test_three_nodes_on_a_cluster_share_a_session(
    redis_cluster: RedisCluster, prefix: str
) -> None:
    deployment = Cluster(SimpleNamespace(url=redis_cluster.url), prefix, size=3)  # type: ignore[arg-type]
    deployment.start()
    try:
        await _one_session_over(deployment, redis_cluster.url, prefix)
    finally:
        deployment.stop()


# -- TLS and AUTH -------------------------------------------------------------------------


async def test_the_store_works_over_tls_with_a_user_and_password(
    tls_redis: TlsRedis, prefix: str
) -> None:
    async with RedisEventStore(tls_redis.url(), prefix=prefix) as store:
        await _store_and_replay(store)


async def test_a_wrong_password_is_refused_clearly_without_showing_it(
    tls_redis: TlsRedis, prefix: str
) -> None:
    store = RedisEventStore(tls_redis.url("not-the-password"), prefix=prefix)
    with pytest.raises(RedisUnavailableError) as caught:
        await store.connect()
    message = str(caught.value)
    assert "not-the-password" not in message, message
    assert "check the user and password" in message, message
    assert f":{tls_redis.tls_port}" in message


async def test_an_unknown_certificate_authority_is_refused(
    tls_redis: TlsRedis, prefix: str
) -> None:
    """Without ``ssl_ca_certs`` the system's CAs are used, and they did not sign the test's
    server certificate: the connection must fail, not fall back to trusting it."""
    store = RedisEventStore(tls_redis.url(ca=False), prefix=prefix)
    with pytest.raises(RedisUnavailableError) as caught:
        await store.connect()
    assert "cert" in str(caught.value).lower(), caught.value


async def test_two_nodes_over_tls_share_a_session(tls_redis: TlsRedis, prefix: str) -> None:
    deployment = Cluster(SimpleNamespace(url=tls_redis.url()), prefix, size=2)  # type: ignore[arg-type]
    deployment.start()
    try:
        await _one_session_over(deployment, tls_redis.url(), prefix)
    finally:
        deployment.stop()
