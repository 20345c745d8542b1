"""Live state of a session, wherever its requests land: a tool call that asks the client
for sampling and elicitation, a stream of progress, notifications on the standalone GET
stream, cancellation; and the session's owner dying (kill -9) or stopping (SIGTERM).

Each scenario runs against one bare node (the SDK alone, no mcp-db: the baseline that
shows the test itself is right), three nodes behind nginx round robin, and one
``uvicorn --workers 3`` port, the last two with ``SessionMiddleware``. Round robin sends
the requests of one call (the call, the client's answers to the server's requests, its
cancellation) to different nodes, so they only work if they reach the session's owner.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import (
    AbstractAsyncContextManager,
    AsyncExitStack,
    asynccontextmanager,
    contextmanager,
    suppress,
)
from pathlib import Path
from typing import Any

import anyio
import httpx
import mcp.types as types
import pytest
import redis as redis_py
from mcp import ClientSession

from mcp_db._sdk import SDK_MAJOR, SDK_VERSION
from tests._client import client_session, result_text
from tests._cluster import Cluster
from tests._nodes import Node
from tests._redis_deployments import RedisCluster
from tests.support.redis_server import RedisServer

#: Expensive multi-node scenarios: once per SDK line (``make test`` runs them on the newest
#: 1.x and 2.x, not again on the oldest 1.x).
pytestmark = pytest.mark.multinode

#: mcp 1.12 reports progress on no request's stream, so there ``steps`` and ``slow``
#: tell their progress with log messages instead (see tests/servers/app.py).
PROGRESS_AS_LOGS = SDK_VERSION.startswith("1.12.")

#: The owner lease of the kill -9 test, and how much past it the takeover may take.
LEASE_SECONDS = 2.0
TAKEOVER_SLACK_SECONDS = 2.5
#: After SIGTERM the owner gives its lease up at once: a long lease must not be waited for.
SIGTERM_LEASE_SECONDS = 30.0
SIGTERM_TAKEOVER_SECONDS = 3.0
SIGTERM_SETTLE_SECONDS = 0.5
SIGTERM_DRAIN_SECONDS = 10.0


class Deployment:
    """Where a client connects, and the processes that serve it.

    ``bare``: one node, no middleware. ``cluster``: three nodes behind nginx.
    ``redis-cluster``: the same three nodes on a Redis Cluster of three primaries.
    ``workers``: ``uvicorn --workers 3`` on one port; the client opens a new connection
    for every request, so the kernel spreads them over the workers."""

    def __init__(
        self, kind: str, redis: RedisServer | RedisCluster, prefix: str, **env: str
    ) -> None:
        self.kind = kind
        self.prefix = prefix
        self.redis_url = redis.url
        base = {"MCP_DB_REDIS_URL": redis.url, "MCP_DB_PREFIX": prefix, **env}
        self.cluster: Cluster | None = None
        self.node: Node | None = None
        if kind in ("cluster", "redis-cluster"):
            self.cluster = Cluster(redis, prefix, size=3, **env)  # type: ignore[arg-type]
        elif kind == "workers":
            # The tests find a session's owner, then act on it; the kernel spreads requests
            # at random, and two in a row through one other worker would move the session.
            workers_env = {**base, "MCP_DB_MIDDLEWARE": "1", "MCP_DB_HAND_OFF": "0"}
            self.node = Node(env=workers_env, workers=3)
        else:
            self.node = Node(env=base)

    @property
    def url(self) -> str:
        if self.cluster is not None:
            return self.cluster.url
        assert self.node is not None
        return self.node.url

    def start(self) -> Deployment:
        if self.cluster is not None:
            self.cluster.start()  # stops what it started if it fails
            return self
        assert self.node is not None
        try:
            self.node.start()
            if self.kind == "workers":
                self.node.worker_pids()
        except BaseException:
            self.node.stop()
            raise
        return self

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
        elif self.node is not None:
            self.node.stop()

    def client(self, **options: Any) -> AbstractAsyncContextManager[ClientSession]:
        return client_session(self.url, fresh_connections=self.kind == "workers", **options)

    def is_node(self, pid: int) -> bool:
        """Whether ``pid`` is one of the processes serving sessions here."""
        if self.cluster is not None:
            return any(n.process is not None and n.process.pid == pid for n in self.cluster.nodes)
        assert self.node is not None and self.node.process is not None
        if self.kind == "workers":
            return _parent_pid(pid) == self.node.process.pid
        return pid == self.node.process.pid

    def announced_on_get_streams(self) -> dict[str, list[str]]:
        """The ``announce`` tags each session's GET stream stored, by stream key."""
        streams: dict[str, list[str]] = {}
        with self._redis() as redis:
            for key in redis.scan_iter(match=f"{self.prefix}:e:*:_GET_stream"):
                streams[key] = [
                    json.loads(fields["n"])["params"]["uri"].removeprefix("note://announce/")
                    for _, fields in redis.xrange(key)
                    if "n" in fields and "note://announce/" in fields["n"]
                ]
        return streams

    def _redis(self) -> Any:
        kind = redis_py.RedisCluster if self.kind == "redis-cluster" else redis_py.Redis
        return kind.from_url(self.redis_url, decode_responses=True)

    def record(self) -> dict[str, str]:
        """The session record of the one session of this deployment's prefix."""
        with self._redis() as redis:
            keys = list(redis.scan_iter(match=f"{self.prefix}:s:*"))
            assert len(keys) == 1, keys
            record: dict[str, str] = redis.hgetall(keys[0])
            return record


def _parent_pid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


@contextmanager
def _deployed(
    kind: str, redis: RedisServer | RedisCluster, prefix: str, **env: str
) -> Iterator[Deployment]:
    deployment = Deployment(kind, redis, prefix, **env).start()
    try:
        yield deployment
    finally:
        deployment.stop()


@pytest.fixture(scope="module", params=["bare", "cluster", "workers", "redis-cluster"])
def deployment(request: pytest.FixtureRequest) -> Iterator[Deployment]:
    """One deployment shared by the scenarios of this module; each test has its own session."""
    prefix = f"t-live-{request.param}-{uuid.uuid4().hex}"
    redis = request.getfixturevalue(
        "redis_cluster" if request.param == "redis-cluster" else "redis_server"
    )
    with _deployed(request.param, redis, prefix) as deployment:
        yield deployment


# -- sampling and elicitation -------------------------------------------------------------


async def _sample(context: Any, params: Any) -> types.CreateMessageResult:
    """The client's "model": it answers the question in capitals."""
    question = params.messages[0].content.text
    return types.CreateMessageResult(
        role="assistant",
        content=types.TextContent(type="text", text=question.upper()),
        model="capitals",
    )


async def _elicit(context: Any, params: Any) -> types.ElicitResult:
    """The client's "user": accepts, quoting what it was asked."""
    return types.ElicitResult(action="accept", content={"ok": True, "note": params.message})


async def test_a_call_asks_the_client_for_sampling_then_elicitation(deployment: Deployment) -> None:
    answers: list[str] = []
    async with deployment.client(
        sampling_callback=_sample, elicitation_callback=_elicit
    ) as session:
        # Several calls: in a cluster the client's answers of each land on other nodes.
        with anyio.move_on_after(10):
            for i in range(3):
                result = await session.call_tool("ask", {"question": f"what is {i}?"})
                answers.append(result_text(result))
    # The model's answer, then the user's verdict on it, as the client gave them.
    assert answers == [f"WHAT IS {i}? | ok=True note=Is 'WHAT IS {i}?' right?" for i in range(3)]


# -- a stream of progress -----------------------------------------------------------------


async def test_a_hundred_progress_notifications_arrive_in_order_exactly_once(
    deployment: Deployment,
) -> None:
    progress: list[float] = []
    logs: list[str] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(str(params.data))

    with anyio.fail_after(20):
        async with deployment.client(logging_callback=on_log) as session:
            result = await session.call_tool(
                "steps", {"n": 100, "delay": 0.002}, progress_callback=on_progress
            )
    assert result_text(result) == "done 100"
    if PROGRESS_AS_LOGS:
        assert (progress, logs) == ([], [f"step {i}" for i in range(100)])
    else:
        assert (progress, logs) == ([float(i) for i in range(100)], [])


# -- the standalone GET stream ------------------------------------------------------------


async def test_notifications_tied_to_no_request_reach_the_get_stream(
    deployment: Deployment,
) -> None:
    # `announce` sends notifications/resources/updated with no related request, so the
    # SDK routes it to the session's standalone GET stream, which the client opened by
    # itself after initialize (on every SDK line: when it sent notifications/initialized).
    announced: list[str] = []

    async def on_message(message: Any) -> None:
        notification = getattr(message, "root", message)  # 1.x wraps it in a root model
        if isinstance(notification, types.ResourceUpdatedNotification):
            announced.append(str(notification.params.uri).removeprefix("note://announce/"))

    async def arrives(tag: str, seconds: float) -> bool:
        with anyio.move_on_after(seconds):
            while tag not in announced:
                await anyio.sleep(0.01)
            return True
        return False

    run = uuid.uuid4().hex[:8]
    async with deployment.client(message_handler=on_message) as session:
        # Until the GET stream is up the SDK drops what would go on it (a new GET
        # replays nothing), and the client cannot tell when it is: announce until one
        # arrives.
        for attempt in range(20):
            warm_up = f"{run}-w{attempt}"
            result = await session.call_tool("announce", {"tag": warm_up})
            assert result_text(result) == f"announced {warm_up}"
            if await arrives(warm_up, 0.2):
                break
        else:
            pytest.fail(f"no notification reached the GET stream: {announced}")
        # From now on every one arrives, whichever node the call lands on.
        tags = [f"{run}-n{i}" for i in range(6)]
        for tag in tags:
            result = await session.call_tool("announce", {"tag": tag})
            assert result_text(result) == f"announced {tag}"
            assert await arrives(tag, 3), f"{tag} never arrived: {announced}"
    assert [a for a in announced if a in tags] == tags
    assert len(announced) == len(set(announced)), f"duplicates: {announced}"
    # They went the way of the GET stream: the SDK stored them as its events.
    stored = [
        [tag for tag in streamed if tag in tags]
        for streamed in deployment.announced_on_get_streams().values()
    ]
    assert [s for s in stored if s] == [tags]


# -- cancellation -------------------------------------------------------------------------


class SlowCall:
    """A ``slow`` tool call running in the background until cancelled."""

    def __init__(self, session: ClientSession, seconds: float) -> None:
        self.session = session
        self.seconds = seconds
        self.tag = uuid.uuid4().hex[:12]
        self.started = anyio.Event()
        self.scope = anyio.CancelScope()
        self.outcome: str | None = None
        #: mcp 1.x: the JSON-RPC id the call gets (its ids count up from here).
        self.request_id: int | None = getattr(session, "_request_id", None)

    async def on_progress(self, value: float, total: float | None, message: str | None) -> None:
        self.started.set()

    async def on_log(self, params: types.LoggingMessageNotificationParams) -> None:
        if str(params.data) == "step 0":
            self.started.set()

    async def run(self) -> None:
        with self.scope:
            try:
                result = await self.session.call_tool(
                    "slow",
                    {"seconds": self.seconds, "tag": self.tag},
                    progress_callback=self.on_progress,
                )
                self.outcome = f"result {result_text(result)}"
            except Exception as error:  # the call may fail once its node is gone
                self.outcome = f"error {error!r}"

    async def cancel(self) -> None:
        """Cancels the call the way the installed SDK's client does."""
        if SDK_MAJOR < 2:
            # 1.x clients send no notifications/cancelled when the caller gives up: the
            # application sends it. mcp 2.x sends it by itself when the scope is cancelled.
            assert self.request_id is not None
            await self.session.send_notification(
                types.ClientNotification(
                    types.CancelledNotification(
                        method="notifications/cancelled",
                        params=types.CancelledNotificationParams(
                            requestId=self.request_id, reason="the test gave up"
                        ),
                    )
                )
            )
        self.scope.cancel()


async def _cancelled_tags(session: ClientSession) -> list[str]:
    tags: list[str] = json.loads(result_text(await session.call_tool("cancelled", {})))
    return tags


async def test_cancelling_a_long_call_reaches_its_handler(deployment: Deployment) -> None:
    call: SlowCall | None = None

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        if call is not None:
            await call.on_log(params)

    with anyio.fail_after(30):
        async with deployment.client(logging_callback=on_log) as session:
            # A few rounds: round robin sends some cancellations to another node than
            # their call, whichever node each call lands on.
            for _ in range(3):
                call = SlowCall(session, seconds=30)
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(call.run)
                    with anyio.fail_after(10):
                        await call.started.wait()
                    await call.cancel()
                assert call.outcome is None, call.outcome
                # The handler sees the cancellation soon after (not after its 30 s).
                waited = 0.0
                while call.tag not in await _cancelled_tags(session):
                    assert waited < 5, "the handler never saw the cancellation"
                    await anyio.sleep(0.05)
                    waited += 0.05
                # Wherever a read lands, it reads the state of the session's owner.
                for _ in range(3):
                    assert call.tag in await _cancelled_tags(session)
            assert result_text(await session.call_tool("echo", {"text": "still"})) == "still"


# -- the owner dies or stops --------------------------------------------------------------


def _owner_pid(record: dict[str, str]) -> int:
    owner = record["owner"]
    assert owner.startswith("node-"), record
    return int(owner.removeprefix("node-"))


@asynccontextmanager
async def _draining(deployment: Deployment, pid: int, seconds: float) -> AsyncIterator[None]:
    """Holds a plain request open on the node ``pid`` (if ``seconds``), so that once
    stopped it does not exit at once but drains that request, as a busy node would."""
    async with AsyncExitStack() as held:
        if seconds:
            if deployment.cluster is not None:
                nodes = deployment.cluster.nodes
                port = next(n.port for n in nodes if n.process and n.process.pid == pid)
            else:
                assert deployment.node is not None
                port = deployment.node.port
            url = f"http://127.0.0.1:{port}/debug/hold?seconds={seconds}"
            # With --workers: new connections until one reaches that worker.
            readers = []  # a reader let go of would close its response, ending the hold
            for _ in range(50):
                http = await held.enter_async_context(httpx.AsyncClient(timeout=seconds + 5))
                response = await held.enter_async_context(http.stream("GET", url))
                readers.append(response.aiter_lines())
                if int(await anext(readers[-1])) == pid:
                    break
            else:
                pytest.fail(f"no connection reached the node {pid}")
        yield


async def _after_owner_goes(
    deployment: Deployment,
    stop_owner: Callable[[int], None],
    budget: float,
    *,
    settle: float = 0,
    drain: float = 0,
) -> tuple[float, int, dict[str, str], dict[str, str]]:
    """With a long call running on the session's owner, ``stop_owner(pid)`` and, after
    ``settle`` seconds, make requests: every one must succeed, and one soon be served by
    a survivor. With ``drain``, the owner has that long to drain once stopped. Returns
    how long after the stop a survivor served, which one, and the session record before
    and after."""
    call: SlowCall | None = None

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        if call is not None:
            await call.on_log(params)

    async def whoami() -> tuple[str, int]:
        """The client's name as the serving node knows it, and that node's pid."""
        name, pid = result_text(await session.call_tool("whoami", {})).split(" on ")
        return name, int(pid)

    async with deployment.client(logging_callback=on_log) as session:
        client_name, _ = await whoami()
        before = deployment.record()
        victim = _owner_pid(before)
        assert deployment.is_node(victim), f"the owner {victim} is none of the nodes"
        call = SlowCall(session, seconds=60)
        async with _draining(deployment, victim, drain), anyio.create_task_group() as tasks:
            tasks.start_soon(call.run)
            with anyio.fail_after(10):
                await call.started.wait()
            stopped = time.monotonic()
            stop_owner(victim)
            await anyio.sleep(settle)
            # A stopping owner may still answer while it drains; a killed one cannot.
            survivor = victim
            with anyio.move_on_after(budget + 5) as waiting:
                while survivor == victim:
                    _, survivor = await whoami()
            took = time.monotonic() - stopped
            assert not waiting.cancelled_caught, f"no survivor served {took:.1f} s after"
            # The session goes on there, with its state (the client's name) intact.
            for i in range(3):
                assert result_text(await session.call_tool("echo", {"text": f"{i}"})) == f"{i}"
            assert await whoami() == (client_name, survivor)
            after = deployment.record()
            tasks.cancel_scope.cancel()  # the call died with its owner
    return took, survivor, before, after


@pytest.mark.parametrize("kind", ["cluster", "workers"])
async def test_kill_9_of_the_owner_mid_call_a_survivor_takes_over_within_the_lease(
    redis_server: RedisServer, prefix: str, kind: str
) -> None:
    lease = str(LEASE_SECONDS)
    with _deployed(kind, redis_server, prefix, MCP_DB_LEASE_SECONDS=lease) as deployment:
        took, survivor, before, after = await _after_owner_goes(
            deployment,
            lambda pid: os.kill(pid, signal.SIGKILL),
            LEASE_SECONDS + TAKEOVER_SLACK_SECONDS,
        )
    print(f"{kind}: a survivor served {took:.2f} s after kill -9 (lease {lease} s)")
    assert took < LEASE_SECONDS + TAKEOVER_SLACK_SECONDS
    _assert_taken_over(before, after, survivor)


@pytest.mark.parametrize("kind", ["cluster", "workers"])
async def test_sigterm_of_the_owner_hands_over_without_waiting_for_the_lease(
    redis_server: RedisServer, prefix: str, kind: str
) -> None:
    terminated: list[int] = []

    def terminate(pid: int) -> None:
        terminated.append(pid)
        os.kill(pid, signal.SIGTERM)

    lease = str(SIGTERM_LEASE_SECONDS)
    with _deployed(kind, redis_server, prefix, MCP_DB_LEASE_SECONDS=lease) as deployment:
        try:
            # The owner drains a request for longer than the takeover may take: the
            # lease goes at SIGTERM, not when the process ends. (The SDK's own SSE
            # responses end at once on SIGTERM, so without it the process would exit
            # within a moment and give up its lease anyway.) Requests that reach the
            # owner before it handles the signal are a matter of draining, not of
            # takeover: the client makes its next one once the signal is handled.
            took, survivor, before, after = await _after_owner_goes(
                deployment,
                terminate,
                SIGTERM_TAKEOVER_SECONDS,
                settle=SIGTERM_SETTLE_SECONDS,
                drain=SIGTERM_DRAIN_SECONDS,
            )
        finally:
            # It may still be draining the held request: no need to wait for it.
            for pid in terminated:
                if deployment.is_node(pid):
                    with suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
    print(f"{kind}: a survivor served {took:.2f} s after SIGTERM (lease {lease} s)")
    assert took < SIGTERM_TAKEOVER_SECONDS
    _assert_taken_over(before, after, survivor)


def _assert_taken_over(before: dict[str, str], after: dict[str, str], survivor: int) -> None:
    """One takeover, by the node that now runs the session's requests."""
    assert _owner_pid(after) == survivor, (before, after)
    assert int(after["epoch"]) == int(before["epoch"]) + 1, (before, after)
