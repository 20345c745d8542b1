"""Sealed relay frames (a secret shared by the nodes) and the relay's byte window, against a
real redis-server, with two nodes' ends of the relay in one process (as in
test_relay_core.py). An attacker here is a plain Redis client: it reads frames on the
relay's channels and publishes its own."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as redis_py
import redis.asyncio as aioredis

from mcp_db import ConfigError, RedisEventStore
from tests._nodes import Node
from tests._relay_parts import forwarded, next_part, request, take
from tests.support.redis_server import RedisServer
from tests.test_resume_e2e import RawSession

pytestmark = pytest.mark.one_sdk_line

SECRET = b"a secret all the nodes share, 32+"
OTHER = b"another secret, of another deployment"
#: A plain frame is kind, request ID (16 bytes), sequence number; a sealed one starts with
#: '#' and then the same.
SEALED = ord("#")


@pytest.fixture
async def store(redis_server: RedisServer, prefix: str) -> AsyncIterator[RedisEventStore]:
    async with RedisEventStore(redis_server.url, prefix=prefix) as s:
        yield s


@pytest.fixture
async def spy(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """Someone with read and write access to the relay's channels."""
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


async def _relay(store: RedisEventStore, node: str, secret: bytes | None, **options: Any) -> Any:
    await store.deployment.ownership(node, 60_000).beat("{}")  # alive: the sweep keeps its requests
    if secret is not None:
        options["secret"] = secret
    relay = store.deployment.relay(node, sweep_ms=100, **options)
    assert await relay.ready(2000)
    return relay


async def _pair(
    store: RedisEventStore, owner_secret: bytes | None, relayer_secret: bytes | None, **options: Any
) -> tuple[Any, Any]:
    owner = await _relay(store, "owner", owner_secret, **options)
    relayer = await _relay(store, "relayer", relayer_secret, **options)
    return owner, relayer


async def _runs(owner: Any, wait: float = 0.5) -> list[bytes]:
    """IDs of the requests the owner would run (taken and claimed) within ``wait``."""
    ran = []
    while True:
        try:
            taken = await asyncio.wait_for(owner.next_requests(), wait)
        except asyncio.TimeoutError:
            return ran
        for item in taken:
            ran.append(item.id)
            owner.respond(item.id, 200, [], b"ran")


class Capture:
    """Frames published on one channel, as a subscriber of it sees them."""

    def __init__(self, client: aioredis.Redis, channel: str) -> None:
        self.client = client
        self.channel = channel
        self.pubsub = client.pubsub()

    async def __aenter__(self) -> Capture:
        await self.pubsub.subscribe(self.channel)
        assert (await self.pubsub.get_message(timeout=2))["type"] == "subscribe"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.pubsub.aclose()

    async def next(self) -> bytes:
        while True:
            message = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=2)
            if message is not None:
                return bytes(message["data"])

    async def publish(self, frame: bytes) -> None:
        await self.client.publish(self.channel, frame)


def _with_id(frame: bytes, request_id: bytes) -> bytes:
    """The frame with another request ID, whether sealed or not."""
    at = 2 if frame[0] == SEALED else 1
    return frame[:at] + request_id + frame[at + 16 :]


async def _one_request(owner: Any, relayer: Any, body: bytes = b"pay 10") -> bytes:
    """Relays one request that the owner runs and answers; its ID."""
    forwarding = asyncio.ensure_future(relayer.forward("owner", "s", "{}", body, 2000))
    ran = await _runs(owner, wait=2)
    assert len(ran) == 1
    outcome, forward = forwarded(await forwarding)
    assert outcome == "accepted"
    assert await next_part(forward) == ("whole", 200, [], b"ran")
    return bytes(ran[0])


# -- replays -------------------------------------------------------------------------------


@pytest.mark.parametrize("secret", [None, SECRET], ids=["no-secret", "secret"])
async def test_a_captured_request_republished_with_a_fresh_id(
    store: RedisEventStore, spy: aioredis.Redis, prefix: str, secret: bytes | None
) -> None:
    """Without a secret, a request frame re-published with another request ID runs a second
    time (documented: the relay then trusts whoever can publish on Redis). With the secret,
    the altered frame does not open: it runs nothing."""
    owner, relayer = await _pair(store, secret, secret)
    async with Capture(spy, f"{prefix}:r:owner:q") as inbox:
        first = await _one_request(owner, relayer)
        captured = await inbox.next()
        await inbox.publish(_with_id(captured, b"\x01" * 16))
        again = await _runs(owner)
    if secret is None:
        assert b"pay 10" in captured, "the request travels in clear"
        assert again == [b"\x01" * 16], "without a secret the forged copy runs"
    else:
        assert b"pay 10" not in captured, "the request travels encrypted"
        assert again == [], "the altered frame ran"
        assert owner.stats()["rejected_forged"] == 1
    assert first != b"\x01" * 16


async def test_a_captured_request_republished_as_is_runs_nothing(
    store: RedisEventStore, spy: aioredis.Redis, prefix: str
) -> None:
    owner, relayer = await _pair(store, SECRET, SECRET)
    async with Capture(spy, f"{prefix}:r:owner:q") as inbox:
        await _one_request(owner, relayer)
        captured = await inbox.next()
        for _ in range(3):
            await inbox.publish(captured)
        assert await _runs(owner) == []
    stats = owner.stats()
    assert (stats["rejected_replayed"], stats["rejected"], stats["served"]) == (3, 3, 1)


async def test_a_stale_request_frame_is_refused(
    store: RedisEventStore, spy: aioredis.Redis, prefix: str
) -> None:
    """A frame captured while the owner was away and re-published later, to an owner that
    has never seen it, is refused as too old."""
    relayer = await _relay(store, "relayer", SECRET)
    async with Capture(spy, f"{prefix}:r:owner:q") as inbox:
        # Only the spy listens on the owner's inbox: nobody takes the request on.
        outcome = forwarded(await relayer.forward("owner", "s", "{}", b"late", 200))
        assert outcome in (("timeout", None), ("unreachable", None))
        captured = await inbox.next()
        await asyncio.sleep(0.6)
        owner = await _relay(store, "owner", SECRET, max_age_ms=500)
        await inbox.publish(captured)
        assert await _runs(owner) == []
    assert owner.stats()["rejected_stale"] == 1


async def test_frames_injected_into_a_live_stream_are_dropped(
    store: RedisEventStore, spy: aioredis.Redis, prefix: str
) -> None:
    """A duplicated data frame, a forged cancel and a forged credit, injected while a
    response streams: none of them changes the stream."""
    owner, relayer = await _pair(store, SECRET, SECRET, window=4)
    async with (
        Capture(spy, f"{prefix}:r:relayer") as to_relayer,
        Capture(spy, f"{prefix}:r:owner") as to_owner,
    ):
        forwarding = asyncio.ensure_future(relayer.forward("owner", "s", "{}", b"", 2000))
        (request_id,) = await _runs_streaming(owner)
        outcome, forward = forwarded(await forwarding)
        assert outcome == "accepted"
        assert (await to_relayer.next())[1:2] == b"A"
        owner.start(request_id, 200, [(b"content-type", b"text/event-stream")])
        assert owner.send(request_id, b"data: 0\n\n") is None
        await to_relayer.next()  # the start
        chunk = await to_relayer.next()
        await to_relayer.publish(chunk)  # the same chunk again
        # A cancel and a credit, unsealed, as anyone could write them.
        await to_owner.publish(b"X" + request_id + b"\0\0\0\0")
        credit = (1000).to_bytes(4, "big") + (1 << 40).to_bytes(8, "big")
        await to_owner.publish(b"C" + request_id + credit)
        disconnected = asyncio.ensure_future(owner.disconnected(request_id))
        waits = [owner.send(request_id, f"data: {i}\n\n".encode()) for i in range(1, 4)]
        assert waits[:2] == [None, None]
        assert waits[2] is not None, "the forged credit opened the window"
        await asyncio.sleep(0.3)
        assert not disconnected.done(), "the forged cancel reached the handler"
        frames = [await next_part(forward) for _ in range(5)]
        assert frames[0][0] == "head"
        assert [f[1] for f in frames[1:]] == [f"data: {i}\n\n".encode() for i in range(4)]
        assert await asyncio.wait_for(waits[2], 5) is True, "real credit still flows"
        owner.end(request_id, True)
        assert await next_part(forward) == ("end", True)
        disconnected.cancel()
    assert relayer.stats()["rejected_replayed"] == 1
    assert owner.stats()["rejected_unsealed"] == 2


async def _runs_streaming(owner: Any) -> list[bytes]:
    return [bytes((await take(owner)).id)]


# -- nodes that do not share the secret ----------------------------------------------------


@pytest.mark.parametrize(
    ("owner_secret", "relayer_secret", "cause"),
    [(SECRET, OTHER, "forged"), (SECRET, None, "unsealed"), (None, SECRET, "sealed")],
    ids=["another-secret", "relayer-without", "owner-without"],
)
async def test_nodes_without_the_same_secret_run_nothing_and_say_why(
    store: RedisEventStore,
    caplog: pytest.LogCaptureFixture,
    owner_secret: bytes | None,
    relayer_secret: bytes | None,
    cause: str,
) -> None:
    owner, relayer = await _pair(store, owner_secret, relayer_secret)
    with caplog.at_level(logging.WARNING, logger="mcp_db"):
        forwarding = asyncio.ensure_future(relayer.forward("owner", "s", "{}", b"", 300))
        assert await _runs(owner) == []
        assert forwarded(await forwarding) == ("timeout", None), (
            "the relayer hears no answer and says so"
        )
    assert owner.stats()[f"rejected_{cause}"] == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"dropped 1 {cause} frame" in w and "relay_secret" in w for w in warnings), warnings


async def test_a_short_secret_is_refused(store: RedisEventStore) -> None:
    with pytest.raises(ConfigError, match="at least 16"):
        store.deployment.relay("node", secret=b"short")


# -- with the secret, the relay works as before ---------------------------------------------


@pytest.mark.parametrize("deployment", ["redis-server", "redis-cluster"])
async def test_a_streamed_response_through_sealed_frames(
    request: pytest.FixtureRequest, prefix: str, deployment: str
) -> None:
    """On one server, and on a Redis Cluster (where the acceptance is not published by the
    claim's script but by the owner, see crates/core/src/relay/serve.rs)."""
    redis = request.getfixturevalue(deployment.replace("-", "_"))
    async with RedisEventStore(redis.url, prefix=prefix) as store:
        await _sealed_stream(store)


async def _sealed_stream(store: RedisEventStore) -> None:
    owner, relayer = await _pair(store, SECRET, SECRET, window=4)
    forwarding = asyncio.ensure_future(relayer.forward("owner", "s", '{"m":1}', b"body", 2000))
    item = request(await take(owner))
    assert tuple(item[1:]) == ("relayer", "s", '{"m":1}', b"body")
    outcome, forward = forwarded(await forwarding)
    assert outcome == "accepted"
    request_id = item[0]

    async def produce() -> None:
        owner.start(request_id, 200, [(b"content-type", b"text/event-stream")])
        for i in range(20):  # five times the window: credit must come back, sealed
            waiting = owner.send(request_id, f"data: {i}\n\n".encode())
            if waiting is not None:
                assert await asyncio.wait_for(waiting, 5) is True
        owner.end(request_id, True)

    producing = asyncio.ensure_future(produce())
    frames = [await next_part(forward)]
    while frames[-1][0] not in ("end", "cut"):
        frames.append(await next_part(forward))
    await producing
    assert frames[0] == ("head", 200, [(b"content-type", b"text/event-stream")])
    assert [f[1] for f in frames[1:-1]] == [f"data: {i}\n\n".encode() for i in range(20)]
    assert frames[-1] == ("end", True)
    assert owner.stats()["rejected"] == relayer.stats()["rejected"] == 0


# -- the byte window -------------------------------------------------------------------------

CHUNK = 256 * 1024
WINDOW_BYTES = 1 << 20


@pytest.mark.parametrize("secret", [None, SECRET], ids=["no-secret", "secret"])
async def test_a_client_that_never_reads_holds_at_most_the_byte_window(
    store: RedisEventStore, secret: bytes | None
) -> None:
    """The owner streams large chunks to a relaying node whose client reads nothing: the
    owner is held once a window's worth of bytes is unacknowledged, so the relaying node
    buffers at most the window plus one chunk, not 64 chunks of any size."""
    owner, relayer = await _pair(store, secret, secret)
    forwarding = asyncio.ensure_future(relayer.forward("owner", "s", "{}", b"", 2000))
    (request_id,) = await _runs_streaming(owner)
    outcome, forward = forwarded(await forwarding)
    assert outcome == "accepted"
    owner.start(request_id, 200, [(b"content-type", b"text/event-stream")])
    sent = 0
    blocked = None
    while blocked is None and sent < 64:
        blocked = owner.send(request_id, b"x" * CHUNK)
        sent += 1
    bound = WINDOW_BYTES + CHUNK
    assert sent * CHUNK <= bound, f"{sent} chunks of {CHUNK} bytes went out unacknowledged"
    stalled = asyncio.ensure_future(blocked)
    for _ in range(50):  # until every frame sent has arrived
        if relayer.stats()["buffered_bytes"] == sent * CHUNK:
            break
        await asyncio.sleep(0.05)
    assert relayer.stats()["buffered_bytes"] == sent * CHUNK <= bound
    await asyncio.sleep(0.2)
    assert not stalled.done(), "the owner goes on although the client reads nothing"
    # The client reads half the window: credit comes back and the owner goes on.
    assert (await next_part(forward))[0] == "head"
    for _ in range(WINDOW_BYTES // 2 // CHUNK):
        assert (await next_part(forward))[0] == "chunk"
    assert await asyncio.wait_for(stalled, 5) is True
    owner.end(request_id, False)
    forward.cancel()


async def test_one_chunk_larger_than_the_window_still_goes(store: RedisEventStore) -> None:
    owner, relayer = await _pair(store, None, None, window_bytes=1000)
    forwarding = asyncio.ensure_future(relayer.forward("owner", "s", "{}", b"", 2000))
    (request_id,) = await _runs_streaming(owner)
    _, forward = forwarded(await forwarding)
    owner.start(request_id, 200, [])
    waiting = owner.send(request_id, b"y" * 5000)
    assert waiting is not None, "the window is exceeded by the one chunk"
    assert (await next_part(forward))[0] == "head"
    assert await next_part(forward) == ("chunk", b"y" * 5000)
    assert await asyncio.wait_for(waiting, 5) is True
    owner.end(request_id, True)
    assert await next_part(forward) == ("end", True)


# -- through SessionMiddleware, on real nodes ------------------------------------------------


@contextmanager
def _nodes(redis_url: str, prefix: str, *secrets: str | None) -> Iterator[list[Node]]:
    """One node per secret (``None``: no ``MCP_DB_RELAY_SECRET``), all with the middleware."""
    base = {"MCP_DB_REDIS_URL": redis_url, "MCP_DB_PREFIX": prefix, "MCP_DB_MIDDLEWARE": "1"}
    base["MCP_DB_HAND_OFF"] = "0"  # what a node relays stays relayed: the relay is the subject
    nodes = []
    try:
        for secret in secrets:
            env = {**base, **({"MCP_DB_RELAY_SECRET": secret} if secret else {})}
            nodes.append(Node(env=env).start())
        yield nodes
    finally:
        for node in nodes:
            node.stop()


async def test_nodes_sharing_the_secret_relay_to_each_other(
    redis_server: RedisServer, prefix: str
) -> None:
    with _nodes(redis_server.url, prefix, SECRET.decode(), SECRET.decode()) as (a, b):
        async with httpx.AsyncClient(timeout=30) as http:
            session = await RawSession(http, a.url).open()
            owner = await session.answered_by(a.url)
            assert await session.answered_by(b.url) == owner, "relayed to the owner"


async def test_a_node_with_another_secret_gets_503_and_the_owner_says_why(
    redis_server: RedisServer, prefix: str
) -> None:
    """Nodes that do not share the secret cannot relay: the client gets 503 once the
    relay's timeout has passed, rather than a hang, and both logs name the likely cause."""
    with _nodes(redis_server.url, prefix, SECRET.decode(), OTHER.decode()) as (a, b):
        async with httpx.AsyncClient(timeout=30) as http:
            session = await RawSession(http, a.url).open()
            await session.answered_by(a.url)
            body = {"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                    "params": {"name": "whoami", "arguments": {}}}  # fmt: skip
            reply = await http.post(b.url, json=body, headers=session.headers())
            assert reply.status_code == 503, reply.text
            assert reply.headers.get("retry-after")
        assert "dropped 1 forged frame" in a.output(), a.output()
        assert "relay_secret" in a.output()
        assert "relay secrets differ" in b.output(), b.output()


def _documented_acl_user(prefix: str, password: str) -> list[str]:
    """The ``ACL SETUSER`` line of docs/security.md, for ``prefix`` and ``password``."""
    page = (Path(__file__).resolve().parent.parent / "docs" / "security.md").read_text()
    (line,) = [x.strip() for x in page.splitlines() if x.strip().startswith("ACL SETUSER")]
    line = line.replace("~mcp:*", f"~{prefix}:*").replace("&mcp:*", f"&{prefix}:*")
    return line.replace(">CHANGE-ME", f">{password}").split()


async def test_the_documented_acl_user_runs_a_deployment(prefix: str) -> None:
    """Two nodes logged in as the ACL user docs/security.md recommends, the default user
    off: they relay, hand a session over on SIGTERM and close it, and Redis refused them
    nothing."""
    server = RedisServer().start()
    try:
        with redis_py.Redis.from_url(server.url) as setup:
            setup.execute_command(*_documented_acl_user(prefix, "node-pw"))
            setup.execute_command("ACL", "SETUSER", "admin", "on", ">admin-pw", "~*", "&*", "+@all")
            setup.execute_command("ACL", "SETUSER", "default", "off")
        url = server.url.replace("redis://", "redis://mcp-node:node-pw@")
        with _nodes(url, prefix, SECRET.decode(), SECRET.decode()) as (a, b):
            async with httpx.AsyncClient(timeout=30) as http:
                session = await RawSession(http, a.url).open()
                owner = await session.answered_by(a.url)
                assert await session.answered_by(b.url) == owner, "relayed to the owner"
                a.stop()  # SIGTERM: the session moves to b at once
                assert await session.answered_by(b.url, retry_for=5) != owner
                deleted = await http.delete(b.url, headers=session.headers())
                assert deleted.status_code == 200, deleted.text
            assert "NOPERM" not in a.output() + b.output()
        admin_url = server.url.replace("redis://", "redis://admin:admin-pw@")
        with redis_py.Redis.from_url(admin_url) as admin:
            assert admin.execute_command("ACL", "LOG") == [], "Redis refused the nodes something"
    finally:
        server.cleanup()


@pytest.mark.parametrize("secret", [None, SECRET.decode()], ids=["no-secret", "secret"])
async def test_a_relayed_call_captured_and_republished_with_a_fresh_id(
    redis_server: RedisServer, prefix: str, secret: str | None
) -> None:
    """Through the middleware: someone subscribed to the relay's channels captures the
    request frame of a tools/call relayed from B to the owner A, and publishes it again with
    another request ID. Without a secret, A runs the call a second time (its result is
    stored twice on the call's stream); with one, A drops the frame and runs nothing."""
    with _nodes(redis_server.url, prefix, secret, secret) as (a, b):
        spy = aioredis.Redis.from_url(redis_server.url)
        pubsub = spy.pubsub()
        try:
            await pubsub.psubscribe(f"{prefix}:r:*:q")
            async with httpx.AsyncClient(timeout=30) as http:
                session = await RawSession(http, a.url).open()
                body = {"jsonrpc": "2.0", "id": 77, "method": "tools/call",
                        "params": {"name": "echo", "arguments": {"text": "pay 10"}}}  # fmt: skip
                reply = await http.post(b.url, json=body, headers=session.headers())
                assert reply.status_code == 200 and "pay 10" in reply.text, reply.text
            # The first message is the subscription's confirmation.
            message = await pubsub.get_message(timeout=2)
            assert message is not None and message["type"] == "psubscribe", message
            message = await pubsub.get_message(timeout=2)
            assert message is not None, "no relayed request seen"
            frame = bytes(message["data"])
            await spy.publish(message["channel"], _with_id(frame, b"\x02" * 16))
            await asyncio.sleep(1)
            results = 0
            async for key in spy.scan_iter(match=f"{prefix}:e:*"):
                if key.decode().endswith(":77"):
                    for _, fields in await spy.xrange(key):
                        results += sum(b'"pay 10"' in value for value in fields.values())
        finally:
            await pubsub.aclose()
            await spy.aclose()
        if secret is None:
            assert b"pay 10" in frame
            assert results == 2, "without a secret, the copy ran again"
        else:
            assert results == 1, "the copy ran"
            assert b"pay 10" not in frame
            assert "dropped 1 forged frame" in a.output()
