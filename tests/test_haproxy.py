"""Three nodes behind HAProxy configured by examples/haproxy.cfg: each session's requests
go to the node that answered its initialize (its owner), so nothing is relayed; when the
owner dies, HAProxy sends them to a survivor, which takes the session over.

The relay counts what it forwards (``relay.forwarded`` in each node's ``/debug/stats``), and
HAProxy names the node of each answer (``X-Served-By``, added by ``tests/support/haproxy.py``)
and shows its stick table on its admin socket."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import anyio
import httpx
import pytest

from tests._client import client_session, result_text, sse_events
from tests._cluster import Cluster
from tests._messages import steps_call
from tests._nodes import Node
from tests.support.haproxy import HAProxy
from tests.support.redis_server import RedisServer
from tests.test_cluster import _settles, _step
from tests.test_resume_e2e import RawSession

# A multi-node scenario whose subject is the balancer's configuration, not the SDK: it
# runs on the newest SDK line only (tests/conftest.py).
pytestmark = [pytest.mark.multinode, pytest.mark.one_sdk_line]


@pytest.fixture
def cluster(redis_server: RedisServer, prefix: str) -> Iterator[Cluster]:
    c = Cluster(redis_server, prefix, size=3, balancer="haproxy", MCP_DB_LEASE_SECONDS="2").start()
    yield c
    c.stop()


class RoundRobin(Cluster):
    """The same, without the recipe's ``stick`` lines: HAProxy's plain round robin."""

    def _balancer(self) -> HAProxy:
        return HAProxy([f"127.0.0.1:{n.port}" for n in self.nodes], sticky=False)


def _haproxy(cluster: Cluster) -> HAProxy:
    assert isinstance(cluster.lb, HAProxy), cluster.lb
    return cluster.lb


def _counters(cluster: Cluster) -> list[dict[str, int]]:
    """The middleware's counters of every live node."""
    return [
        httpx.get(f"http://127.0.0.1:{n.port}/debug/stats").json()["middleware"]
        for n in cluster.nodes
        if n.process is not None
    ]


def _relayed(cluster: Cluster) -> int:
    """Requests the live nodes relayed to a session's owner so far."""
    return sum(c["relay.forwarded"] for c in _counters(cluster))


async def _use(url: str, name: str, rounds: int = 5) -> str:
    """A session of the SDK's client through ``url`` making ``4 * rounds`` requests; the
    pid of the node that ran its tools (always the same: its owner)."""
    ran_on = set()
    async with client_session(url) as session:
        for i in range(rounds):
            tools = await session.list_tools()
            assert {"echo", "whoami"} <= {t.name for t in tools.tools}
            text = f"{name}/{i}"
            assert result_text(await session.call_tool("echo", {"text": text})) == text
            ran_on.add(result_text(await session.call_tool("whoami", {})).split(" on ")[1])
            resource = await session.read_resource("note://greeting")
            assert getattr(resource.contents[0], "text", None) == "hello from a resource"
    (pid,) = ran_on
    return pid


async def test_each_session_is_served_by_its_owner_and_nothing_is_relayed(
    cluster: Cluster,
) -> None:
    node_of_pid = {str(n.process.pid): f"127.0.0.1:{n.port}" for n in cluster.nodes if n.process}
    owners = [node_of_pid[await _use(cluster.url, f"s{n}")] for n in range(6)]
    counters = _counters(cluster)
    assert sum(c["admitted"] for c in counters) == 6, "the nodes counted the six sessions"
    assert sum(c["relay.forwarded"] for c in counters) == 0, f"relayed: {counters}"
    assert sum(c["relay.served"] for c in counters) == 0
    # HAProxy learnt each session's node from the answer to its initialize, and round
    # robin spread the initializes: the sessions are owned by more than one node.
    assert sorted(_haproxy(cluster).stuck().values()) == sorted(owners)
    assert len(set(owners)) > 1, owners
    # Every node's answers went through HAProxy, the initialize to some node included.
    assert set(cluster.lb.upstreams()) == set(owners)


async def test_without_the_stick_lines_round_robin_relays(
    redis_server: RedisServer, prefix: str
) -> None:
    """What the stick lines save: the same session under plain round robin is relayed."""
    cluster = RoundRobin(redis_server, prefix, size=3).start()
    try:
        await _use(cluster.url, "rr")
        relayed = _relayed(cluster)
        assert relayed >= 10, f"two of three of about 25 requests reach a non-owner: {relayed}"
        assert len(cluster.served_by()) == 3
        assert _haproxy(cluster).stuck() == {}
    finally:
        cluster.stop()


async def test_a_stream_cut_by_kill_9_of_the_owner_resumes_on_a_survivor(
    cluster: Cluster,
) -> None:
    lb = _haproxy(cluster)
    node_at = {f"127.0.0.1:{n.port}": n for n in cluster.nodes}
    async with httpx.AsyncClient(timeout=10) as http:
        session = await RawSession(http, cluster.url).open()
        owner = node_at[lb.stuck()[session.id]]
        call = steps_call(200, 0.02, "p")
        seen: list[dict[str, str]] = []
        async with http.stream("POST", cluster.url, json=call, headers=session.headers()) as stream:
            assert node_at[lb.server(stream.headers["x-served-by"])] is owner
            async for event in sse_events(stream):
                seen.append(event)
                if len(seen) == 5:
                    break
        await asyncio.sleep(0.3)  # the tool goes on storing events nobody reads
        owner.stop(kill=True)  # kill -9 mid-call; HAProxy has not marked it down yet
        headers = {
            **session.headers(),
            "accept": "text/event-stream",
            "last-event-id": seen[-1]["id"],
        }
        replayed: list[dict[str, str]] = []
        survivor: Node | None = None
        # A survivor takes the session over once the dead node's 2 s lease has lapsed, and
        # replays what the dead node stored; the stream then stays open, so it is read until
        # a second passes without an event.
        with anyio.move_on_after(6) as scope:
            async with http.stream("GET", cluster.url, headers=headers) as stream:
                assert stream.status_code == 200, await stream.aread()
                survivor = node_at[lb.server(stream.headers["x-served-by"])]
                async for event in sse_events(stream):
                    replayed.append(event)
                    scope.deadline = min(scope.deadline, anyio.current_time() + 1)
        assert survivor is not None and survivor is not owner
        progress = [_step(json.loads(e["data"])) for e in seen + replayed]
        assert len(replayed) >= 5, "what the dead node stored before dying came back from Redis"
        assert progress == list(range(len(progress))), "exactly once, in order"
        # Steady state again: HAProxy learnt the survivor from its answer, and sends it the
        # session's requests, which it serves as their owner.
        assert node_at[lb.stuck()[session.id]] is survivor
        assert survivor.process is not None
        for _ in range(3):
            assert await session.answered_by(cluster.url) == str(survivor.process.pid)
    assert _relayed(cluster) == 0


async def test_delete_through_haproxy_gives_404_on_every_node(cluster: Cluster) -> None:
    lb = _haproxy(cluster)
    async with httpx.AsyncClient(timeout=10) as http:
        session = await RawSession(http, cluster.url).open()
        owner = lb.stuck()[session.id]
        for _ in range(3):
            assert await session.event_ids_of_call()  # served fine
        assert sorted(cluster.session_counts()) == [0, 0, 1], "live state on the owner only"
        deleted = await http.delete(cluster.url, headers=session.headers())
        assert deleted.status_code == 200
        assert lb.server(deleted.headers["x-served-by"]) == owner
        for url in [*(n.url for n in cluster.nodes), cluster.url]:
            response = await http.post(
                url,
                json={"jsonrpc": "2.0", "id": 6, "method": "tools/list"},
                headers=session.headers(),
            )
            assert response.status_code == 404, (url, response.text)
            assert response.json()["error"]["message"] == "Session not found"
    assert _relayed(cluster) == 0
    assert await _settles(cluster, [0, 0, 0]) < 1.0
