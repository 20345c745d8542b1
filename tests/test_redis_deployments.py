"""mcp-db on Redis deployments other than one plain server: a Redis Cluster of three
primaries (the multi-node MCP scenarios run on it too, in test_live_state.py), and TLS with
a user and password (``rediss://user:pass@…``). Both are started by the suite."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import httpx
import pytest
import redis as redis_py

from mcp_db import RedisEventStore, RedisUnavailableError
from mcp_db._core import key_of, parse_key
from tests import _messages as msgs
from tests._client import client_session, result_text
from tests._cluster import Cluster
from tests._nodes import Node
from tests._redis_deployments import RedisCluster, TlsRedis
from tests.test_resume_e2e import RawSession

#: Expensive multi-node scenarios: once per SDK line (``make test`` runs them on the newest
#: 1.x and 2.x, not again on the oldest 1.x).
pytestmark = pytest.mark.multinode

SESSIONS, ROUNDS = 40, 5


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


@pytest.mark.one_sdk_line
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


def _relay_channels(port: int, prefix: str) -> list[str]:
    """The relay channels (inboxes and reply channels) subscribed on the server at ``port``."""
    with redis_py.Redis(port=port, decode_responses=True) as redis:
        return sorted(redis.execute_command("PUBSUB", "CHANNELS", f"{prefix}:r:*"))


async def _await_relays_on(port: int, prefix: str, nodes: int, seconds: float = 15) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while len(channels := _relay_channels(port, prefix)) < 2 * nodes:
        assert asyncio.get_running_loop().time() < deadline, (
            f"the relays did not all move to the hub on port {port}: {channels}"
        )
        await asyncio.sleep(0.1)


@pytest.mark.one_sdk_line
async def test_the_relay_follows_the_pub_sub_hub_through_cluster_failovers(prefix: str) -> None:
    """The relay's hub is the primary of slot 0. ``CLUSTER FAILOVER`` moves it to a replica
    while the old hub goes on running, so no connection breaks: nodes started before listen
    on the old hub, a node started after on the new one. Within about a second the older
    nodes follow, and requests relay between all of them. Then ``kill -9`` of the hub: every
    relay loses its connection and subscribes again on the replica the cluster promotes."""
    redis = RedisCluster(hub_replica=True).start()
    env = {"MCP_DB_REDIS_URL": redis.url, "MCP_DB_PREFIX": prefix, "MCP_DB_MIDDLEWARE": "1"}
    env["MCP_DB_HAND_OFF"] = "0"  # what a node relays stays relayed: the relay is the subject
    nodes = [Node(env=env).start(), Node(env=env).start()]
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            first = await RawSession(http, nodes[0].url).open()
            pids = [str(n.process.pid) for n in nodes]  # type: ignore[union-attr]
            assert await first.answered_by(nodes[1].url) == pids[0]
            old_hub = redis.hub()
            assert len(_relay_channels(old_hub, prefix)) == 4  # two nodes, two channels each

            redis.fail_over_the_hub()
            new_hub = redis.hub()
            assert new_hub != old_hub
            nodes.append(Node(env=env).start())
            pids.append(str(nodes[2].process.pid))  # type: ignore[union-attr]
            await _await_relays_on(new_hub, prefix, nodes=3)
            assert _relay_channels(old_hub, prefix) == []
            third = await RawSession(http, nodes[2].url).open()
            assert await third.answered_by(nodes[0].url) == pids[2]
            assert await third.answered_by(nodes[1].url) == pids[2]
            assert await first.answered_by(nodes[2].url) == pids[0]

            redis.kill_the_hub()
            assert redis.hub() == old_hub  # its replica again, promoted back
            await _await_relays_on(old_hub, prefix, nodes=3)
            assert await third.answered_by(nodes[1].url, retry_for=10) == pids[2]
            assert await first.answered_by(nodes[2].url, retry_for=10) == pids[0]
    finally:
        for node in nodes:
            node.stop()
        redis.cleanup()


# -- TLS and AUTH -------------------------------------------------------------------------


@pytest.mark.one_sdk_line
async def test_the_store_works_over_tls_with_a_user_and_password(
    tls_redis: TlsRedis, prefix: str
) -> None:
    async with RedisEventStore(tls_redis.url(), prefix=prefix) as store:
        await _store_and_replay(store)


@pytest.mark.one_sdk_line
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


@pytest.mark.one_sdk_line
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
