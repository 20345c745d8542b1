"""``SessionMiddleware``: any node serves any session.

Wrap the SDK's Starlette app with it on every node, all nodes sharing one Redis::

    store = RedisEventStore("redis://redis:6379/0")
    app = SessionMiddleware(server.streamable_http_app(...), store=store)

For each handshake-era request it:

- records a new session in Redis while the SDK's answer to ``initialize`` goes out, before
  the client can learn the session ID;
- answers 404 for a session that Redis does not know, has closed, or that belongs to
  another principal, on every node, before any transport exists;
- serves a session this node owns at once (no Redis round trip while its lease holds),
  and relays a request for a session another node owns to that node through Redis
  (``_relay.py``, ``src/relay.rs``), so open streams, calls in progress and requests to the
  client all stay where their state lives;
- takes over a session whose owner is gone (crashed: after its lease; shut down: at once),
  fenced by an epoch, and rebuilds the SDK transport already initialized with the
  client's stored ``initialize`` params;
- turns DELETE into a CLOSED tombstone, so every node answers 404 from then on.

Lifespan, other routes, 2026-era requests and stateless managers pass through untouched.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import anyio

# Imported up front: on mcp 1.x this also installs the session class every session of this
# process is built from (see ``_sdk/session_v1.py``), rehydrated or not.
from mcp_db._relay import MOVED_HEADER, RELAYED, encode_head, pump, serve
from mcp_db._sdk import valid_initialize_params
from mcp_db._sdk.rehydrate import TooManySessions, forget, rehydrate
from mcp_db.errors import ConfigError, McpDbError, RedisOutOfMemoryError
from mcp_db.event_store import RedisEventStore
from mcp_db.metrics import request_duration, watch

logger = logging.getLogger("mcp_db")

__all__ = ["HANDSHAKE_VERSIONS", "SessionMiddleware", "find_session_manager"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: Protocol versions that have sessions; requests of any other version pass through.
HANDSHAKE_VERSIONS = frozenset({"2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"})

_NOT_FOUND = b'{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Session not found"}}'
_UNAVAILABLE = (
    b'{"jsonrpc":"2.0","id":null,"error":{"code":-32603,"message":"Session store unavailable"}}'
)
#: Redis is at ``maxmemory`` with ``noeviction``: no new session can be recorded.
_FULL = (
    b'{"jsonrpc":"2.0","id":null,"error":{"code":-32603,'
    b'"message":"Session store full: Redis is out of memory (maxmemory); try again later"}}'
)
_MOVED = b'{"jsonrpc":"2.0","id":null,"error":{"code":-32603,"message":"Session moved; retry"}}'
#: How many sessions owned elsewhere a node remembers the owner of.
_MAX_OWNER_HINTS = 100_000
#: The environment variable a node reads its relay secret from when none is passed.
RELAY_SECRET_ENV = "MCP_DB_RELAY_SECRET"
#: How often a request is relayed again to an owner that heard nothing but holds its lease.
_SILENT_OWNER_RETRY = 0.05
_OWNER_BUSY = (
    b'{"jsonrpc":"2.0","id":null,"error":{"code":-32603,"message":"Session owner not answering"}}'
)
_OWNER_LOST = (
    b'{"jsonrpc":"2.0","id":null,"error":{"code":-32603,"message":"Session owner went away"}}'
)
_TOO_LARGE = (
    b'{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Request body too large"}}'
)
_TOO_MANY = (
    b'{"jsonrpc":"2.0","id":null,"error":{"code":-32603,"message":"Too many open sessions"}}'
)


#: Scope key naming the path a request took, for the request-duration histogram.
_PATH = "mcp_db.path"
_METHODS = frozenset({"GET", "POST", "DELETE"})
#: The histogram's attribute sets, built once each: (path, method) -> attributes.
_ATTRIBUTES: dict[tuple[str, str], dict[str, str]] = {}


def _attributes(scope: Scope) -> dict[str, str]:
    path = scope.get(_PATH) or ("relay_in" if RELAYED in scope else "local")
    method = scope["method"] if scope["method"] in _METHODS else "other"
    attributes = _ATTRIBUTES.get((path, method))
    if attributes is None:
        attributes = _ATTRIBUTES[path, method] = {"path": path, "method": method}
    return attributes


_INNER = ("session_manager", "app", "endpoint", "routes", "router", "middleware_stack")


def find_session_manager(app: Any, depth: int = 6) -> Any:
    """The ``StreamableHTTPSessionManager`` inside a Starlette app (or ``None``)."""
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

    seen: set[int] = set()
    frontier = [app]
    for _ in range(depth):
        following = []
        for obj in frontier:
            if obj is None or id(obj) in seen:
                continue
            seen.add(id(obj))
            if isinstance(obj, StreamableHTTPSessionManager):
                return obj
            for name in _INNER:
                value = getattr(obj, name, None)
                if isinstance(value, list):
                    following.extend(value)
                elif value is not None and not isinstance(value, (str, bytes, int)):
                    following.append(value)
        frontier = following
    return None


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


try:  # mcp 1.2x and 2.x: sessions belong to the principal that created them
    from mcp.server.auth.middleware.bearer_auth import (
        AuthenticatedUser as _AuthenticatedUser,
    )
    from mcp.server.auth.middleware.bearer_auth import (
        authorization_context as _authorization_context,
    )
except ImportError:  # mcp 1.12 has no session owners
    _AuthenticatedUser = None  # type: ignore[assignment,misc]


def _principal(scope: Scope) -> str:
    """The authenticated principal as the SDK identifies it, as JSON ("" if none)."""
    user = scope.get("user")
    if _AuthenticatedUser is None or not isinstance(user, _AuthenticatedUser):
        return ""
    return json.dumps(_authorization_context(user), sort_keys=True)


def _relay_secret(secret: bytes | str | None) -> bytes | None:
    """The relay secret as bytes: the argument, else ``MCP_DB_RELAY_SECRET``, else ``None``."""
    if secret is None:
        secret = os.environ.get(RELAY_SECRET_ENV) or None
    if isinstance(secret, str):
        secret = secret.encode()
    if secret is not None and not isinstance(secret, bytes):
        raise ConfigError(f"relay_secret must be bytes or str, got {type(secret).__name__}")
    return secret


def _positive_ms(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
    return max(1, int(value * 1000))


async def _respond(
    scope: Scope,
    send: Send,
    status: int,
    body: bytes = b"",
    retry_after: bool = False,
    moved: bool = False,
) -> None:
    if status == 503:
        scope[_PATH] = "unavailable"
    headers = [(b"content-type", b"application/json")] if body else []
    if retry_after:
        headers.append((b"retry-after", b"1"))
    if moved:
        headers.append((MOVED_HEADER, b"1"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _store_unavailable(scope: Scope, send: Send) -> None:
    """Redis is unreachable and this node cannot serve the request alone: 503 with
    ``Retry-After``, except for a stream resumption (GET with ``Last-Event-ID``). That one
    gets what the owner's SDK answers when its replay cannot read Redis: an event stream
    that ends at once, with nothing in it. SDK clients give a resumption two failed tries
    (a 503 is one) but reconnect after every stream that ends, so this keeps them coming
    back, every server ``retry``, until Redis returns and the replay runs, wherever the
    request lands. Nothing is replayed or changed, and the session is not vouched for."""
    if scope["method"] != "GET" or _header(scope, b"last-event-id") is None:
        await _respond(scope, send, 503, _UNAVAILABLE, retry_after=True)
        return
    scope[_PATH] = "unavailable"
    headers = [
        (b"content-type", b"text/event-stream"),
        (b"cache-control", b"no-cache, no-transform"),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


@dataclass
class _Owned:
    """A session this node owns: the fencing epoch it owns it at, and what the fast path
    needs to serve it without asking Redis."""

    epoch: int
    principal: str
    #: The node's lease generation when ownership was last confirmed (see ``_gen``).
    gen: int
    active: bool = False
    used: bool = True
    in_flight: int = 0
    last_used: float = 0.0


class SessionMiddleware:
    """ASGI middleware that lets every node behind a load balancer serve every session.

    Each session has one owner: the node holding its live SDK state (open streams, calls in
    progress, requests to the client awaiting answers). The owner serves its sessions'
    requests straight away; any other node relays them to it through Redis. When the owner
    is gone (its heartbeat lapsed, or it shut down), the next node that needs the session
    takes it over, fenced by an epoch, and rebuilds it from Redis.

    Args:
        app: the SDK's Starlette app (``streamable_http_app()``).
        store: the :class:`~mcp_db.RedisEventStore` shared by all nodes; session records
            live under its prefix. It is attached to the session manager here.
        session_manager: the SDK's ``StreamableHTTPSessionManager``, if it cannot be found
            inside ``app``.
        node_id: this node's name in session records; default ``<hostname>:<pid>``. Every
            process needs its own (``uvicorn --workers N`` gets that from the PID).
        session_ttl_seconds: idle time after which a session expires everywhere; default
            the manager's ``session_idle_timeout`` (1800 s if it has none).
        lease_seconds: how long a node's sessions stay its own after its last heartbeat. A
            crashed node's sessions move after this; a node shut down with SIGTERM hands
            them over at once.
        relay_timeout_seconds: how long a relayed request may wait for the owner to take it
            on before the client gets 503 with ``Retry-After``.
        release_on_sigterm: give up this node's sessions as soon as SIGTERM arrives, rather
            than when the server finally stops.
        relay_secret: a secret shared by every node (at least 16 bytes; ``str`` is taken
            as UTF-8), default the environment variable ``MCP_DB_RELAY_SECRET``. With it,
            every relay frame is encrypted and authenticated, and a frame that was altered,
            forged, replayed or sealed more than 30 s ago is dropped and runs nothing.
            Without it, anyone who can read the relay's channels on Redis reads relayed
            requests (``Authorization`` headers included) and responses, and anyone who can
            publish there can make a node run a request. Nodes with different secrets, or
            with and without one, cannot relay to each other (see docs/security.md).
    """

    def __init__(
        self,
        app: Any,
        *,
        store: RedisEventStore,
        session_manager: Any = None,
        node_id: str | None = None,
        session_ttl_seconds: float | None = None,
        lease_seconds: float = 10.0,
        relay_timeout_seconds: float = 5.0,
        release_on_sigterm: bool = True,
        relay_secret: bytes | str | None = None,
    ) -> None:
        if not isinstance(store, RedisEventStore):
            raise ConfigError(
                f"SessionMiddleware needs a RedisEventStore shared by all nodes, got {store!r}"
            )
        self.app = app
        self.store = store
        self.manager = session_manager if session_manager is not None else find_session_manager(app)
        if self.manager is None:
            raise ConfigError(
                "no StreamableHTTPSessionManager found in the app; pass session_manager="
            )
        self.node_id = node_id or f"{socket.gethostname()}:{os.getpid()}"
        ttl = session_ttl_seconds
        if ttl is None:
            ttl = getattr(self.manager, "session_idle_timeout", None) or 1800
        self.ttl_ms = _positive_ms("session_ttl_seconds", ttl)
        self.lease_ms = _positive_ms("lease_seconds", lease_seconds)
        self.relay_timeout_ms = _positive_ms("relay_timeout_seconds", relay_timeout_seconds)
        self._redis_timeout = store.timeout_seconds
        self.release_on_sigterm = release_on_sigterm
        # Past this idle time the owner asks Redis again (the record may have expired).
        self._idle_limit = self.ttl_ms / 1000 * 0.9
        self.max_body = int(getattr(self.manager, "max_request_body_size", 4 * 1024 * 1024))
        self.records = store._core.sessions()
        self.stateless = bool(getattr(self.manager, "stateless", False))
        self._locks: dict[str, anyio.Lock] = {}
        self._owned: dict[str, _Owned] = {}
        #: The owner last seen of sessions owned elsewhere: requests go straight there.
        self._owners: dict[str, str] = {}
        #: Bumped whenever this node's lease may have lapsed: ownership confirmed under an
        #: older generation must be confirmed again in Redis before it is trusted.
        self._gen = 0
        self._lease_until = 0.0
        #: When this node's heartbeat reached Redis again after failing (None while it
        #: fails): see ``_recovering``. A node that never lost Redis counts from its start.
        self._redis_back_at: float | None = float("-inf")
        self._released = False
        self._started = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._lifespan_state: dict[str, Any] | None = None
        #: Counters for tests and operators (see ``stats()``).
        self.admissions = 0
        #: ``initialize`` requests refused for params the SDK would not accept.
        self.refused_initialize = 0
        self.rehydrations = 0
        self.takeovers = 0
        self.relayed_out = 0
        self.relayed_in = 0
        #: ``initialize`` answered 503 because Redis was out of memory, and when that was
        #: last logged (``None`` once a session was recorded again).
        self.refused_full = 0
        self._full_logged: float | None = None
        #: 404 answers by reason; waits for a lock or claim by lock; Redis faults by operation.
        self.not_found: Counter[str] = Counter()
        self.lock_waits: Counter[str] = Counter()
        self.redis_errors: Counter[str] = Counter()
        self._durations = request_duration()
        if not self.stateless:  # a stateless manager has no sessions: nothing to do at all
            # First: a bad secret raises before anything is attached or started.
            self._relay = store._core.relay(self.node_id, secret=_relay_secret(relay_secret))
            store.attach(self.manager)
            self._bus = store._core.bus()
            self._own = store._core.ownership(self.node_id, self.lease_ms)
            self._hook()
            watch(self)

    def stats(self) -> dict[str, int]:
        """Counters: ``admitted``, ``refused_initialize``, ``refused_full`` (``initialize``
        answered 503: Redis out of memory), ``rehydrated``, ``taken_over``,
        ``not_found.<reason>``, ``lock_waits.<lock>``, ``redis_errors.<operation>`` and
        ``relay.<counter>`` (the relay's own). What the ``mcp_db.sessions.*``,
        ``mcp_db.relay.*``, ``mcp_db.locks.contended`` and ``mcp_db.redis.errors``
        instruments report."""
        counts = {
            "admitted": self.admissions,
            "refused_initialize": self.refused_initialize,
            "rehydrated": self.rehydrations,
            "taken_over": self.takeovers,
            "refused_full": self.refused_full,
        }
        for prefix, counter in (
            ("not_found.", self.not_found),
            ("lock_waits.", self.lock_waits),
            ("redis_errors.", self.redis_errors),
        ):
            # A copy first: an OpenTelemetry reader may call this from its own thread.
            for key, value in dict(counter).items():
                counts[prefix + key] = value
        if not self.stateless:
            for key, value in self._relay.stats().items():
                counts["relay." + key] = value
        return counts

    def _hook(self) -> None:
        """Runs this middleware's session logic where the SDK's route hands a request to the
        session manager: after the app's own middleware (authentication sets the principal
        there), for the MCP endpoint only. 1.2x and 2.x route through ``asgi_app`` (the
        manager's body-size limit); 1.12 through ``handle_request``."""
        name = "asgi_app" if hasattr(self.manager, "asgi_app") else "handle_request"
        self._inner = getattr(self.manager, name)
        setattr(self.manager, name, self._handle)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.stateless:
            await self.app(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
        else:
            if not self._started:
                await self._start()
            await self.app(scope, receive, send)

    # -- life of the node -------------------------------------------------------------------

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Joins the cluster once the app has started (so the manager can take sessions),
        and leaves it before the app stops."""
        self._lifespan_state = scope.get("state")

        async def on_receive() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                await self._release()
            return message

        async def on_send(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                await self._start()
            await send(message)

        await self.app(scope, on_receive, on_send)

    async def _start(self) -> None:
        if self._started:
            return
        self._started = True
        self._spawn(self._listen())
        self._spawn(self._take_relayed())
        if not await self._relay.ready(2000):
            logger.error("node %s cannot listen for relayed requests yet", self.node_id)
        await self._beat()
        self._spawn(self._heartbeat())
        if self.release_on_sigterm:
            self._hook_sigterm()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _hook_sigterm(self) -> None:
        """Releases this node's sessions the moment SIGTERM arrives, then lets the server's
        own handler (uvicorn's, which finishes requests in flight) do the rest."""
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGTERM)
        if not callable(previous):
            return  # nobody handles SIGTERM gracefully: the process just ends
        loop = asyncio.get_running_loop()

        def on_sigterm(signum: int, frame: Any) -> None:
            loop.call_soon_threadsafe(lambda: self._spawn(self._release()))
            previous(signum, frame)

        signal.signal(signal.SIGTERM, on_sigterm)

    async def _release(self) -> None:
        """Hands every session of this node over at once: no new relayed requests, no
        heartbeat, so the next node that needs a session takes it without waiting."""
        if self._released or self.stateless:
            return
        self._released = True
        self._lease_until = 0.0
        self._relay.drain()
        try:
            await self._own.release()
            logger.info("node %s released its %d sessions", self.node_id, len(self._owned))
        except McpDbError as exc:
            self.redis_errors["lease"] += 1
            logger.warning("node %s could not release its lease: %s", self.node_id, exc)

    async def _beat(self) -> None:
        started = time.monotonic()
        try:
            held = await self._own.beat(self._info)
        except McpDbError as exc:
            self.redis_errors["lease"] += 1
            logger.warning("node %s cannot renew its lease: %s", self.node_id, exc)
            self._redis_back_at = None
            return
        if self._redis_back_at is None:
            self._redis_back_at = started
        if self._released:  # released while the beat was in flight
            await self._own.release()
            return
        if not held:
            self._gen += 1  # the lease lapsed (or is new): trust no ownership until confirmed
        self._lease_until = started + self.lease_ms / 1000 * 0.9

    @property
    def _info(self) -> str:
        return json.dumps(
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "beat": int(time.time() * 1000),
                "lease": self.lease_ms,  # with the key's PTTL, `mcp-db doctor` measures skew
            }
        )

    async def _heartbeat(self) -> None:
        # Often enough to renew the lease, and to slide a session's TTL before it runs out.
        interval = min(self.lease_ms, self.ttl_ms) / 3000
        while not self._released:
            await anyio.sleep(interval)
            if self._released:
                return
            await self._beat()
            await self._touch()

    async def _touch(self) -> None:
        """Slides the idle TTL of sessions used since the last beat, and lets go of those
        that expired, were closed or moved to another node meanwhile."""
        used = []
        for session_id, owned in list(self._owned.items()):
            if owned.used or owned.in_flight:
                used.append((session_id, owned.epoch))
                owned.used = False
            elif session_id not in self.manager._server_instances:
                self._disown(session_id)  # reaped for idleness: rebuilt on demand
        if not used:
            return
        try:
            statuses = await self._own.touch(used, self.ttl_ms)
        except McpDbError as exc:
            self.redis_errors["touch"] += 1
            logger.warning("cannot refresh %d sessions: %s", len(used), exc)
            return
        for (session_id, _), status in zip(used, statuses, strict=True):
            if status != 1:
                await self._let_go(session_id, {0: "expired", -1: "closed"}.get(status, "moved"))

    def _lease_valid(self) -> bool:
        return time.monotonic() < self._lease_until

    def _recovering(self) -> bool:
        """Whether this node lost Redis less than a lease ago. Every heartbeat key may have
        expired during an outage while its node lived on, and a live node renews its key
        within a third of a lease once Redis is back: until a whole lease has passed, a
        missing heartbeat is no evidence of death."""
        back = self._redis_back_at
        return back is None or time.monotonic() < back + self.lease_ms / 1000

    # -- requests ---------------------------------------------------------------------------

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One request to the MCP endpoint, timed by the path it takes."""
        if scope["type"] != "http":
            await self._inner(scope, receive, send)
            return
        started = time.perf_counter()
        try:
            await self._route(scope, receive, send)
        finally:
            self._durations.record(time.perf_counter() - started, _attributes(scope))

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        version = _header(scope, b"mcp-protocol-version")
        if version is not None and version not in HANDSHAKE_VERSIONS:
            scope[_PATH] = "passthrough"
            await self._inner(scope, receive, send)
            return
        session_id = _header(scope, b"mcp-session-id")
        if session_id is None:
            if scope["method"] == "POST":
                await self._opening(scope, receive, send)
            else:
                scope[_PATH] = "passthrough"
                await self._inner(scope, receive, send)
            return
        await self._in_session(scope, receive, send, session_id, version)

    # -- a request without a session: maybe initialize -------------------------------------

    async def _opening(self, scope: Scope, receive: Receive, send: Send) -> None:
        body, complete = await self._read_body(receive)
        replay = _Replay(body, receive, more=not complete)
        if not complete and body:
            # Past the SDK's limit (mcp 1.12 has none): refused before any session exists,
            # so none can go unrecorded.
            await _respond(scope, send, 413, _TOO_LARGE)
            return
        request = _initialize_request(body) if complete else None
        if request is None:
            scope[_PATH] = "passthrough"
            await self._inner(scope, replay, send)
            return
        init = request.get("params")
        if not valid_initialize_params(init):
            # The SDK would create a session and only then refuse its params: a session
            # with an ID and no record, that no node could serve. Refused here, on any node.
            self.refused_initialize += 1
            await _respond(scope, send, 400, _invalid_initialize(request.get("id")))
            return
        scope[_PATH] = "initialize"
        principal = _principal(scope)

        unrecorded: str | None = None
        full = False

        async def record_then_send(message: Message) -> None:
            nonlocal unrecorded, full
            if unrecorded is not None:
                return  # the SDK's answer is replaced by the 503 below
            if message["type"] == "http.response.start" and message["status"] == 200:
                session_id = _response_header(message, b"mcp-session-id")
                if session_id:
                    # Recorded before the client can learn the ID (it travels in this message).
                    try:
                        # Both writes within one operation's bound, as documented.
                        await asyncio.wait_for(
                            self._record(session_id, principal, init), self._redis_timeout
                        )
                    except (McpDbError, asyncio.TimeoutError) as exc:
                        # A session no other node could find (and that this one would
                        # answer 404 for once Redis is back) is worse than none: refuse it,
                        # and the client opens one again later.
                        self.redis_errors["session_record"] += 1
                        if isinstance(exc, RedisOutOfMemoryError):
                            full = True
                            self._redis_full(exc)
                        else:
                            logger.error(
                                "cannot record session %s: %s",
                                session_id[:8],
                                exc or "Redis did not answer in time",
                            )
                        unrecorded = session_id
                        # Redis may still run the queued writes (it was paused, say): then
                        # the record of a session nobody learned must not stay behind.
                        self._spawn(self._forget_unlearned(session_id))
                        return
                    if self._full_logged is not None:
                        self._full_logged = None
                        logger.warning("Redis has room again: new sessions are admitted")
                    self.admissions += 1
                    self._adopt(session_id, 1, principal)
            await send(message)

        await self._inner(scope, replay, record_then_send)
        if unrecorded is not None:
            # The transport goes before the client hears, so nothing of it outlives the 503.
            await self._let_go(unrecorded, "its record could not be written")
            await _respond(scope, send, 503, _FULL if full else _UNAVAILABLE, retry_after=True)

    def _redis_full(self, exc: McpDbError) -> None:
        """Counts an ``initialize`` refused because Redis is out of memory; logs the first
        of an episode (until a session is recorded again; at most once a minute), not every
        request."""
        self.refused_full += 1
        now = time.monotonic()
        if self._full_logged is None or now - self._full_logged >= 60:
            self._full_logged = now
            logger.error(
                "Redis is out of memory (maxmemory): new sessions get 503 until it has room;"
                " sessions that exist go on. %s",
                exc,
            )

    async def _record(self, session_id: str, principal: str, init: Any) -> None:
        await self.records.create(
            session_id, self.node_id, principal, json.dumps(init), self.ttl_ms
        )
        await self.records.transition(session_id, "INITIALIZED", self.ttl_ms)

    async def _forget_unlearned(self, session_id: str) -> None:
        """Deletes the record of a session refused with 503, should Redis write it late;
        retried (Redis executes a connection's commands in order, so this comes after the
        create if that ran at all) until Redis answers, for up to a minute."""
        delay, deadline = 0.5, time.monotonic() + 60
        while True:
            try:
                if await self.records.forget_unlearned(session_id, self.node_id):
                    logger.warning("deleted the late record of refused session %s", session_id[:8])
                return
            except McpDbError as exc:
                if time.monotonic() > deadline:
                    logger.error(
                        "cannot delete the record of refused session %s: %s", session_id[:8], exc
                    )
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _read_body(self, receive: Receive) -> tuple[bytes, bool]:
        """The request body, up to the SDK's size limit; ``complete`` is False past it (the
        rest is left for the SDK, which answers 413)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks), False
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), True
            if size > self.max_body:
                return b"".join(chunks), False

    # -- a request in a session -------------------------------------------------------------

    async def _in_session(
        self, scope: Scope, receive: Receive, send: Send, session_id: str, version: str | None
    ) -> None:
        owned = self._owned.get(session_id)
        local = self.manager._server_instances.get(session_id)
        relayed = scope.get(RELAYED) is not None
        if (
            owned is not None
            and local is not None
            and owned.gen == self._gen
            and self._lease_valid()
            and time.monotonic() - owned.last_used < self._idle_limit
        ):
            # This node owns the session, its lease holds and the session was used within
            # its TTL: nobody else can have taken it over, closed it (that goes through the
            # owner) or let it expire (the owner slides its TTL on every heartbeat).
            if owned.principal != _principal(scope):
                await self._not_found(scope, send, "other_principal")
                return
            await self._serve_owned(scope, receive, send, session_id, owned)
            return
        owner = None if relayed or owned is not None else self._owners.get(session_id)
        if owner is not None:
            # Another node owned the session when this one last looked: relay to it without
            # reading the record. The owner checks everything the record would tell (it
            # answers 404 itself, or refuses as moved, and then the record is read here).
            body, complete = await self._read_body(receive)
            receive = _Replay(body, receive, more=not complete)
            if complete:
                try:
                    outcome = await self._relay_once(scope, receive, send, session_id, owner, body)
                except McpDbError as exc:
                    # The owner may have heard the request: sending it again could run it
                    # twice. The client retries.
                    self.redis_errors["relay"] += 1
                    logger.error("cannot relay a request of session %s: %s", session_id[:8], exc)
                    await _store_unavailable(scope, send)
                    return
                if outcome in ("sent", "failed"):
                    return
                self._owners.pop(session_id, None)
        try:
            record = await self.records.lookup(session_id, self.ttl_ms)
        except McpDbError as exc:
            self.redis_errors["session_lookup"] += 1
            # Redis is unreachable: keep serving what this node can serve on its own.
            if local is None:
                logger.error("cannot admit session %s: %s", session_id[:8], exc)
                await _store_unavailable(scope, send)
                return
            if owned is not None and owned.principal != _principal(scope):
                await self._not_found(scope, send, "other_principal")
                return
            if scope["method"] == "DELETE":
                # Closed here alone, the session would come back to life on another node
                # once Redis is back: refuse, and the client retries.
                await _respond(scope, send, 503, _UNAVAILABLE, retry_after=True)
                return
            logger.warning("serving session %s without its record: %s", session_id[:8], exc)
            await self._inner(scope, receive, send)
            return
        if (
            record is None
            or record.get("state") == "CLOSED"
            or record.get("principal", "") != _principal(scope)
        ):
            if record is None:
                # Expired if this node held it; otherwise unknown (or expired elsewhere).
                reason = "unknown" if owned is None and local is None else "expired"
            else:
                reason = "closed" if record.get("state") == "CLOSED" else "other_principal"
            if reason != "other_principal":
                await self._let_go(session_id, "expired" if record is None else "closed")
            await self._not_found(scope, send, reason)
            return
        owner = record.get("owner") or record.get("node", "")
        epoch = int(record.get("epoch") or 0)
        owned = self._owned.get(session_id)  # again: a concurrent request may have claimed it
        if owned is not None and owned.epoch >= epoch:
            # This node claimed the session after the record was read: the read is stale.
            owner, epoch = self.node_id, owned.epoch
        if owner == self.node_id:
            await self._serve_as_owner(scope, receive, send, session_id, record, epoch, version)
            return
        if owned is not None or self.manager._server_instances.get(session_id) is not None:
            await self._let_go(session_id, f"owned by {owner} at epoch {epoch}")
        if relayed:
            # Relayed here, but ownership moved on the way: the client retries.
            await _respond(scope, send, 503, _MOVED, retry_after=True, moved=True)
            return
        await self._forward(scope, receive, send, session_id, record, owner, epoch, version)

    async def _serve_as_owner(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        session_id: str,
        record: dict[str, str],
        epoch: int,
        version: str | None,
    ) -> None:
        """Serves a session the record says this node owns, rebuilding it if need be."""
        owned = self._adopt(session_id, epoch, record.get("principal", ""))
        owned.active = owned.active or record.get("state") == "ACTIVE"
        if session_id not in self.manager._server_instances:
            try:
                if await self._rehydrate(session_id, record, version):
                    scope.setdefault(_PATH, "rehydrated")  # a takeover rehydrates too
            except _TooMany:
                await _respond(scope, send, 503, _TOO_MANY)
                return
        await self._serve_owned(scope, receive, send, session_id, owned)

    async def _serve_owned(
        self, scope: Scope, receive: Receive, send: Send, session_id: str, owned: _Owned
    ) -> None:
        if scope["method"] == "DELETE":
            await self._close(scope, receive, send, session_id, owned)
            return
        if not owned.active:
            try:
                await self.records.transition(session_id, "ACTIVE", self.ttl_ms, epoch=owned.epoch)
                owned.active = True
            except McpDbError as exc:
                # Bookkeeping only: serve the request (this node owns the session and its
                # lease holds) and record the state with a later request.
                self.redis_errors["session_record"] += 1
                logger.warning("cannot mark session %s active: %s", session_id[:8], exc)
        owned.used = True
        owned.last_used = time.monotonic()
        owned.in_flight += 1
        try:
            await self._inner(scope, receive, send)
        finally:
            owned.in_flight -= 1
            owned.last_used = time.monotonic()

    async def _close(
        self, scope: Scope, receive: Receive, send: Send, session_id: str, owned: _Owned
    ) -> None:
        # CLOSED first: from this moment every node answers 404. Without Redis the session
        # cannot be closed everywhere, so it is not closed anywhere: the client retries.
        try:
            done = await self.records.transition(
                session_id, "CLOSED", self.ttl_ms, epoch=owned.epoch
            )
        except McpDbError as exc:
            self.redis_errors["session_record"] += 1
            logger.warning("cannot close session %s: %s", session_id[:8], exc)
            await _respond(scope, send, 503, _UNAVAILABLE, retry_after=True)
            return
        if not done[0] and done[1] == "fenced":
            await self._let_go(session_id, "taken over before its DELETE")
            await _respond(scope, send, 503, _MOVED, retry_after=True, moved=True)
            return
        self._disown(session_id)
        if session_id in self.manager._server_instances:
            await self._inner(scope, receive, send)  # the SDK terminates its transport
        else:
            await _respond(scope, send, 200)
        await self._announce(f"closed {session_id}")  # in case another node holds one

    async def _not_found(self, scope: Scope, send: Send, reason: str) -> None:
        """Answers 404 to a request in a session, counted by reason."""
        self.not_found[reason] += 1
        scope[_PATH] = "not_found"
        await _respond(scope, send, 404, _NOT_FOUND)

    def _adopt(self, session_id: str, epoch: int, principal: str) -> _Owned:
        self._owners.pop(session_id, None)
        owned = self._owned.get(session_id)
        if owned is None or owned.epoch != epoch:
            owned = _Owned(epoch=epoch, principal=principal, gen=self._gen)
            self._owned[session_id] = owned
            self.store._core.fence(session_id, epoch)
        owned.gen = self._gen
        return owned

    def _disown(self, session_id: str) -> None:
        if self._owned.pop(session_id, None) is not None:
            self.store._core.fence(session_id, None)

    async def _let_go(self, session_id: str, why: str) -> None:
        """Forgets a session this node no longer owns (closed, expired or taken over)."""
        self._disown(session_id)
        transport = self.manager._server_instances.get(session_id)
        if transport is not None:
            logger.info("node %s lets go of session %s: %s", self.node_id, session_id[:8], why)
            try:
                await forget(self.manager, session_id, transport)
            except Exception:
                logger.exception("could not close session %s", session_id[:8])

    # -- another node owns the session ------------------------------------------------------

    async def _forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        session_id: str,
        record: dict[str, str],
        owner: str,
        epoch: int,
        version: str | None,
    ) -> None:
        """Relays the request to the session's owner; takes the session over if the owner
        is gone."""
        body, complete = await self._read_body(receive)
        if not complete and body:
            # A relayed request travels whole, so it is bounded like the SDK bounds its own.
            await _respond(scope, send, 413, _TOO_LARGE)
            return
        moves = 0
        patience: float | None = None  # until when a silent owner is asked again
        while moves < 3:
            try:
                outcome = await self._relay_once(scope, receive, send, session_id, owner, body)
                if outcome in ("sent", "failed"):
                    return
                if outcome == "moved":
                    moves += 1
                    fresh = await self.records.lookup(session_id, self.ttl_ms)
                    if fresh is None or fresh.get("state") == "CLOSED":
                        await self._not_found(scope, send, "closed" if fresh else "expired")
                        return
                    record = fresh
                    owner = record.get("owner") or record.get("node", "")
                    epoch = int(record.get("epoch") or 0)
                    if owner == self.node_id:  # it moved here meanwhile
                        replay = _Replay(body, receive, more=not complete)
                        await self._serve_as_owner(
                            scope, replay, send, session_id, record, epoch, version
                        )
                        return
                    continue
                alive = await self._own.alive(owner)
                if alive or self._recovering():
                    # Nobody heard the request, yet the owner's lease holds: its
                    # subscription is coming back (Redis restarted, a cluster's pub/sub hub
                    # moved), or it crashed and the lease has yet to run out. Or this node
                    # itself just got Redis back, and the owner's lease may have lapsed in
                    # the outage while it lived on. Ask again until the lease has had time
                    # to lapse (or to be renewed). Nothing ran: nobody heard it.
                    now = time.monotonic()
                    patience = patience or now + self.lease_ms / 1000 + 0.5
                    if now >= patience:
                        if not alive:
                            patience = now + self.lease_ms / 1000  # still recovering: wait on
                        else:
                            await _respond(scope, send, 503, _OWNER_BUSY, retry_after=True)
                            return
                    await anyio.sleep(_SILENT_OWNER_RETRY)
                    continue
                claimed, owner, epoch, why = await self._own.claim(
                    session_id, owner, epoch, self.ttl_ms
                )
            except McpDbError as exc:
                self.redis_errors["relay"] += 1
                logger.error("cannot relay a request of session %s: %s", session_id[:8], exc)
                await _store_unavailable(scope, send)
                return
            if claimed:  # "claimed", or "held": a concurrent request here claimed it first
                # Adopted before the next await, so concurrent requests here see the claim.
                self._adopt(session_id, epoch, record.get("principal", ""))
                if why == "claimed":
                    self.takeovers += 1
                    scope[_PATH] = "takeover"
                    await self._announce(f"owner {session_id} {self.node_id} {epoch}")
                else:
                    self.lock_waits["claim"] += 1
                replay = _Replay(body, receive, more=not complete)
                await self._serve_as_owner(scope, replay, send, session_id, record, epoch, version)
                return
            if why in ("closed", "missing"):
                await self._not_found(scope, send, "closed" if why == "closed" else "expired")
                return
            # "moved": another node took it over first; relay to that one.
            moves += 1
            self.lock_waits["claim"] += 1
        await _respond(scope, send, 503, _OWNER_BUSY, retry_after=True)

    async def _announce(self, message: str) -> None:
        """Tells the other nodes of a takeover or a close, so a node still holding the
        session lets go at once. Only news: without it the record and the epoch fence still
        rule, and a node that missed it finds out on its next heartbeat."""
        try:
            await self._bus.publish(message)
        except McpDbError as exc:
            self.redis_errors["relay"] += 1
            kind, _, rest = message.partition(" ")
            logger.warning("cannot announce %s of session %s: %s", kind, rest[:8], exc)

    async def _relay_once(
        self, scope: Scope, receive: Receive, send: Send, session_id: str, owner: str, body: bytes
    ) -> str:
        """Relays the request to ``owner`` once: ``"sent"`` (answered, maybe with an error
        the owner gave), ``"failed"`` (answered 503 here), ``"moved"`` (the owner no longer
        owns the session and ran nothing) or ``"gone"`` (nobody took it, and nobody will;
        the owner may be gone). Raises McpDbError when Redis is unreachable."""
        outcome, forward = await self._relay.forward(
            owner, session_id, encode_head(scope), body, self.relay_timeout_ms
        )
        if outcome == "accepted":
            self.relayed_out += 1
            result = await pump(forward, receive, send)
            if result == "sent":
                self._note_owner(session_id, owner)
                scope[_PATH] = "relayed"
                return "sent"
            if result == "lost":
                await _respond(scope, send, 503, _OWNER_LOST, retry_after=True)
                return "failed"
            if result == "gone":  # the client went away before the answer began
                return "failed"
            self._owners.pop(session_id, None)
            if result == "not-found":  # the owner counted its 404
                scope[_PATH] = "relayed"
                return "sent"
            return "moved"
        if outcome == "lost":
            # The owner took the request on and was then found gone: it may have run, so it
            # is not sent again anywhere. The client decides.
            logger.warning("owner %s of session %s was lost mid-request: %s", owner,
                           session_id[:8], forward)  # fmt: skip
            await _respond(scope, send, 503, _OWNER_LOST, retry_after=True)
            return "failed"
        if outcome == "timeout" and await self._own.alive(owner):
            logger.warning(
                "owner %s of session %s did not take a request within %d ms: it is busy, or"
                " it drops this node's frames because their relay secrets differ (its log"
                " then says so)",
                owner,
                session_id[:8],
                self.relay_timeout_ms,
            )
            await _respond(scope, send, 503, _OWNER_BUSY, retry_after=True)
            return "failed"
        return "gone"

    def _note_owner(self, session_id: str, owner: str) -> None:
        """Remembers which node owns a session this node relays to (bounded)."""
        owners = self._owners
        if session_id not in owners and len(owners) >= _MAX_OWNER_HINTS:
            del owners[next(iter(owners))]
        owners[session_id] = owner

    async def _take_relayed(self) -> None:
        """Serves requests other nodes relay to this one, each in its own task."""
        while True:
            try:
                item = await self._relay.next_request()
            except McpDbError as exc:
                self.redis_errors["relay"] += 1
                logger.warning("cannot take a relayed request: %s", exc)
                await anyio.sleep(0.1)
                continue
            if item is None:
                return
            self.relayed_in += 1
            request_id, relayed_from, _session, head, body = item
            self._spawn(
                serve(
                    self.app,
                    self._relay,
                    request_id,
                    relayed_from,
                    head,
                    body,
                    self._lifespan_state,
                )
            )

    async def _rehydrate(
        self, session_id: str, record: dict[str, str], version: str | None
    ) -> bool:
        """Rebuilds the session's transport; ``False`` if a concurrent request did."""
        lock = self._locks.setdefault(session_id, anyio.Lock())
        if lock.locked():
            self.lock_waits["rehydrate"] += 1
        try:
            async with lock:
                if session_id in self.manager._server_instances:
                    return False  # a concurrent request rebuilt it first
                principal = json.loads(record["principal"]) if record.get("principal") else None
                try:
                    await rehydrate(
                        self.manager,
                        session_id,
                        json.loads(record["init"]),
                        principal=principal,
                        protocol=version or record.get("protocol"),
                    )
                except TooManySessions:
                    raise _TooMany() from None
                self.rehydrations += 1
                return True
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._locks.pop(session_id, None)

    async def _listen(self) -> None:
        """Lets go of sessions closed, or taken over, by another node."""
        while True:
            message = await self._bus.next()
            if message is None:
                return
            kind, _, rest = message.partition(" ")
            session_id, _, new_owner = rest.partition(" ")
            if kind == "closed":
                self._owners.pop(session_id, None)
                await self._let_go(session_id, message)  # a no-op for sessions not held here
            elif kind == "owner" and not new_owner.startswith(self.node_id + " "):
                await self._let_go(session_id, message)
                if session_id in self._owners:
                    self._owners[session_id] = new_owner.partition(" ")[0]


class _TooMany(Exception):
    pass


class _Replay:
    """A ``receive`` that first hands back the body already read, then the rest."""

    def __init__(self, body: bytes, receive: Receive, *, more: bool) -> None:
        self.body: bytes | None = body
        self.more = more
        self.receive = receive

    async def __call__(self) -> Message:
        if self.body is not None:
            body, self.body = self.body, None
            return {"type": "http.request", "body": body, "more_body": self.more}
        return await self.receive()


def _initialize_request(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON-RPC ``initialize`` request, or ``None`` for anything else (the SDK
    answers that itself, a malformed body included)."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than Python's stack
        return None
    if isinstance(payload, dict) and payload.get("method") == "initialize" and "id" in payload:
        return payload
    return None


def _invalid_initialize(request_id: Any) -> bytes:
    if not isinstance(request_id, (str, int)) or isinstance(request_id, bool):
        request_id = None
    error = {
        "code": -32602,
        "message": "Invalid params: initialize needs protocolVersion, capabilities and "
        "clientInfo; no session was created",
    }
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "error": error}).encode()


def _response_header(message: Message, name: bytes) -> str | None:
    for key, value in message.get("headers", ()):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None
