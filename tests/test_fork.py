"""A store or bus built before a fork works in every child (issue 14, item 3).

``gunicorn --preload`` builds the app in the master and forks the workers; the SDK's 1.x
suite starts its servers with ``multiprocessing``. A fork keeps only the thread that
forked: the core's I/O thread, and every connection it drove, stay with the parent. Each
test here forks with ``os.fork()`` after the parent used the core, runs the child's part on
a new event loop, and fails if the child does not finish in time (it is then killed: a
hang fails, it never blocks the suite). The parent checks afterwards that it still works,
and that what each side stored the other reads back from Redis.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import traceback
import warnings
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis as redis_py

from mcp_db import MemoryEventStore, RedisEventStore, RedisSubscriptionBus
from mcp_db._core import parse_key
from mcp_db.subscriptions import ResourceUpdated
from tests._client import AUTO_RESUME, client_session, result_text
from tests._messages import notification
from tests._nodes import Node
from tests.support.redis_server import RedisServer

#: How long a child may take. Its part takes milliseconds; a child that hangs is killed.
CHILD_SECONDS = 10.0


def in_child(work: Callable[[], Awaitable[str]], seconds: float = CHILD_SECONDS) -> str:
    """Forks; the child runs ``work()`` on a new event loop and exits. Returns what it
    returned. Fails if it raised, or did not finish within ``seconds``."""
    read, write = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns that forking a process with threads may deadlock the child:
        # what these tests check does not happen.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 1
        try:
            os.close(read)
            report = asyncio.run(work())
            status = 0
        except BaseException:
            report = traceback.format_exc()
        finally:
            os.write(write, report.encode()[-60_000:])
            os._exit(status)
    os.close(write)
    deadline = time.monotonic() + seconds
    while (waited := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read)
            pytest.fail(f"the child hung: not done {seconds} s after the fork")
        time.sleep(0.01)
    with os.fdopen(read, "rb") as pipe:
        report = pipe.read().decode()
    assert os.waitstatus_to_exitcode(waited[1]) == 0, f"the child failed:\n{report}"
    return report


async def replayed(store: Any, session: str, after: str) -> list[tuple[str, int]]:
    """``(event ID, progress)`` of the events ``session`` stored after ``after``."""
    sent: list[tuple[str, int]] = []

    async def send(event: Any) -> None:
        message = getattr(event.message, "root", event.message)
        sent.append((event.event_id, int(message.params["progress"])))

    assert await store.for_session(session).replay_events_after(after, send) == "1"
    return sent


async def stored(store: Any, session: str, *progress: int) -> list[str]:
    view = store.for_session(session)
    return [await view.store_event("1", notification(n)) for n in progress]


def test_a_redis_store_used_before_a_fork_stores_and_replays_in_the_child(
    redis_server: RedisServer, prefix: str
) -> None:
    store = RedisEventStore(redis_server.url, prefix=prefix)
    first, second = asyncio.run(stored(store, "s", 0, 1))

    async def child() -> str:
        [third] = await stored(store, "s", 2)
        assert await replayed(store, "s", first) == [(second, 1), (third, 2)]
        await store.close()
        return third

    third = in_child(child)
    # The parent goes on, and reads what the child stored.
    fourth = asyncio.run(stored(store, "s", 3))[0]
    expected = [(second, 1), (third, 2), (fourth, 3)]
    assert asyncio.run(replayed(store, "s", first)) == expected
    assert store.stats()["stored"] == 3, "the child's appends are the child's own"


def test_a_store_built_in_the_child_works_once_the_parent_used_one(
    redis_server: RedisServer, prefix: str
) -> None:
    # The parent's store leaves the core's runtime behind in the child: a new store there
    # must not be built on it.
    used = RedisEventStore(redis_server.url, prefix=prefix)
    [first] = asyncio.run(stored(used, "s", 0))

    async def child() -> str:
        fresh = RedisEventStore(redis_server.url, prefix=prefix)
        [second] = await stored(fresh, "s", 1)
        assert await replayed(fresh, "s", first) == [(second, 1)]
        await fresh.close()
        return second

    second = in_child(child)
    assert asyncio.run(replayed(used, "s", first)) == [(second, 1)]


def test_a_store_built_before_a_fork_works_in_children_of_children(
    redis_server: RedisServer, prefix: str
) -> None:
    store = RedisEventStore(redis_server.url, prefix=prefix)
    [first] = asyncio.run(stored(store, "s", 0))

    async def grandchild() -> str:
        [third] = await stored(store, "s", 2)
        return third

    async def child() -> str:
        [second] = await stored(store, "s", 1)
        # Forked from a thread with no running loop, as a server would fork.
        third = await asyncio.to_thread(in_child, grandchild)
        return f"{second} {third}"

    second, third = in_child(child).split()
    assert asyncio.run(replayed(store, "s", first)) == [(second, 1), (third, 2)]


def test_a_memory_store_keeps_in_the_child_what_the_parent_stored() -> None:
    store = MemoryEventStore()
    first, second = asyncio.run(stored(store, "s", 0, 1))

    async def child() -> str:
        [third] = await stored(store, "s", 2)
        assert await replayed(store, "s", first) == [(second, 1), (third, 2)]
        return "ok"

    in_child(child)
    # Memory is each process's own: the child's event is not the parent's.
    assert asyncio.run(replayed(store, "s", first)) == [(second, 1)]


PROBE = ResourceUpdated(uri="probe:fork")


async def exchange(a: RedisSubscriptionBus, b: RedisSubscriptionBus) -> None:
    """Each bus hears what the other publishes (each is a process's subscription, with an
    origin of its own)."""
    heard: dict[str, list[Any]] = {"a": [], "b": []}
    unsubscribe = [a.subscribe(heard["a"].append), b.subscribe(heard["b"].append)]
    try:
        for publisher, listener in ((b, "a"), (a, "b")):
            deadline = time.monotonic() + 5
            # Until the listener's subscription is up, a publish reaches no one there.
            while not any(getattr(e, "uri", None) == PROBE.uri for e in heard[listener]):
                assert time.monotonic() < deadline, f"bus {listener} heard nothing: {heard}"
                await publisher.publish(PROBE)
                await asyncio.sleep(0.02)
    finally:
        for stop in unsubscribe:
            stop()


@pytest.mark.parametrize("built_from", ["store", "url"])
def test_a_subscription_bus_built_before_a_fork_publishes_and_hears_in_the_child(
    redis_server: RedisServer, prefix: str, built_from: str
) -> None:
    store = RedisEventStore(redis_server.url, prefix=prefix)
    bus = RedisSubscriptionBus(store if built_from == "store" else redis_server.url, prefix=prefix)
    other = RedisSubscriptionBus(redis_server.url, prefix=prefix)
    asyncio.run(exchange(bus, other))

    async def child() -> str:
        # With a bus built in the child, and with the parent's other one.
        await exchange(bus, RedisSubscriptionBus(redis_server.url, prefix=prefix))
        await exchange(bus, other)
        return "ok"

    in_child(child)
    asyncio.run(exchange(bus, other))


# -- gunicorn --preload -------------------------------------------------------------------
#
# The test app (tests/servers/app.py) wrapped in SessionMiddleware, served by gunicorn with
# three uvicorn workers; `--preload` builds the store and the middleware in the master,
# before any worker is forked. The client opens a new connection for every request, so
# the kernel spreads a session's requests over the workers.

#: How long the owner's lease is: SIGTERM must hand over at once, not after it.
LEASE_SECONDS = 30.0
SIGTERM_TAKEOVER_SECONDS = 5.0
#: A request that reaches the owner before it handles SIGTERM is drained, not taken over
#: (tests/test_live_state.py): the next request goes once the signal is handled.
SIGTERM_SETTLE_SECONDS = 0.5


class Preloaded:
    """``gunicorn --preload -k uvicorn_worker.UvicornWorker -w 3`` on one port."""

    def __init__(self, redis: RedisServer, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        env = {
            "MCP_DB_REDIS_URL": redis.url,
            "MCP_DB_PREFIX": prefix,
            "MCP_DB_MIDDLEWARE": "1",
            "MCP_DB_DEFAULT_NODE_ID": "1",
            "MCP_DB_LEASE_SECONDS": str(LEASE_SECONDS),
            # The tests find the owning worker, then act on it: the session stays there.
            "MCP_DB_HAND_OFF": "0",
        }
        self.node = Node(env=env, workers=3, gunicorn_preload=True)

    @property
    def url(self) -> str:
        return self.node.url

    def workers(self, seconds: float = 20, besides: frozenset[int] = frozenset()) -> set[int]:
        """The worker PIDs, once each of the three has answered a connection of its own,
        ``besides`` excluded (as answering)."""
        return self.node.worker_pids(seconds, besides)

    def is_worker(self, pid: int) -> bool:
        """Whether ``pid`` is a worker of this gunicorn (a child of its master)."""
        assert self.node.process is not None
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        return int(stat.rsplit(")", 1)[1].split()[1]) == self.node.process.pid

    def nodes(self) -> dict[str, int]:
        """Node ID -> PID of every node whose heartbeat is in Redis."""
        with redis_py.Redis.from_url(self.redis.url, decode_responses=True) as redis:
            keys = redis.scan_iter(match=f"{self.prefix}:n:*")
            names = [parsed[1] for key in keys if (parsed := parse_key(self.prefix, key))]
        return {name: int(name.rsplit(":", 1)[1]) for name in names}

    def record(self) -> dict[str, str]:
        """The session record of the one session of this prefix."""
        with redis_py.Redis.from_url(self.redis.url, decode_responses=True) as redis:
            [key] = redis.scan_iter(match=f"{self.prefix}:s:*")
            record: dict[str, str] = redis.hgetall(key)
            return record


@pytest.fixture
def preloaded(redis_server: RedisServer, prefix: str) -> Iterator[Preloaded]:
    deployment = Preloaded(redis_server, prefix)
    deployment.node.start()
    try:
        yield deployment
    finally:
        deployment.node.stop()


async def whoami(session: Any) -> tuple[str, int]:
    """The client's name as the serving worker knows it, and that worker's PID."""
    name, pid = result_text(await session.call_tool("whoami", {})).split(" on ")
    return name, int(pid)


@pytest.mark.multinode
async def test_gunicorn_preload_serves_one_session_across_workers_each_a_node(
    preloaded: Preloaded,
) -> None:
    workers = preloaded.workers()
    with anyio.fail_after(30):
        async with client_session(preloaded.url, fresh_connections=True) as session:
            name, owner = await whoami(session)
            assert owner in workers
            for i in range(12):  # each on a new connection: most reach another worker
                text = result_text(await session.call_tool("echo", {"text": f"{i}"}))
                assert text == f"{i}"
                assert await whoami(session) == (name, owner), "every call runs on the owner"
    # Each worker is a node of its own, with its own lease, kept alive from the worker.
    nodes = preloaded.nodes()
    assert sorted(nodes.values()) == sorted(workers), nodes
    assert nodes[preloaded.record()["owner"]] == owner


@pytest.mark.multinode
@pytest.mark.skipif(not AUTO_RESUME, reason="mcp 1.12's client does not resume by itself")
async def test_gunicorn_preload_resumes_a_cut_stream_exactly_once_in_order(
    preloaded: Preloaded,
) -> None:
    preloaded.workers()
    seen: list[int] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(int(progress))

    with anyio.fail_after(30):
        async with client_session(preloaded.url, fresh_connections=True) as session:
            # The stream is cut after notification 5; the client resumes it with
            # Last-Event-ID, on whichever worker its new connection reaches.
            result = await session.call_tool(
                "steps", {"n": 20, "cut_at": 5}, progress_callback=on_progress
            )
    assert result_text(result) == "done 20"
    assert seen == list(range(20))


@pytest.mark.multinode
async def test_gunicorn_preload_survives_sigterm_of_a_worker(preloaded: Preloaded) -> None:
    workers = preloaded.workers()
    with anyio.fail_after(60):
        async with client_session(preloaded.url, fresh_connections=True) as session:
            name, owner = await whoami(session)
            epoch = int(preloaded.record()["epoch"])
            os.kill(owner, signal.SIGTERM)
            stopped = time.monotonic()
            await anyio.sleep(SIGTERM_SETTLE_SECONDS)
            # Every request succeeds; one soon runs on a survivor, which took over.
            survivor = owner
            while survivor == owner:
                assert time.monotonic() - stopped < SIGTERM_TAKEOVER_SECONDS, "no takeover"
                _, survivor = await whoami(session)
            # One of the others, or the worker gunicorn has forked in the owner's place.
            assert preloaded.is_worker(survivor)
            assert int(preloaded.record()["epoch"]) == epoch + 1
            # gunicorn forks a new worker from the master in its place: it serves too.
            replacement = preloaded.workers(besides=frozenset({owner}))
            assert len(replacement - workers) == 1, (workers, replacement)
            for i in range(6):
                assert result_text(await session.call_tool("echo", {"text": f"{i}"})) == f"{i}"
            assert await whoami(session) == (name, survivor)
