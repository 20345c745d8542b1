"""``SessionMiddleware``: any node serves any session.

Wrap the SDK's Starlette app with it on every node, all nodes sharing one Redis::

    store = RedisEventStore("redis://redis:6379/0")
    app = SessionMiddleware(server.streamable_http_app(...), store=store)

For each handshake-era request it:

- records a new session in Redis while the SDK's answer to ``initialize`` goes out, before
  the client can learn the session ID (``admission.py``);
- answers 404 for a session that Redis does not know, has closed, or that belongs to
  another principal, on every node, before any transport exists (``routing.py``);
- serves a session this node owns at once (no Redis round trip while its lease holds;
  ``owner.py``), and relays a request for a session another node owns to that node through
  Redis (``forward.py``, ``_relay.py``, ``crates/core/src/relay/``), so open streams, calls in
  progress and requests to the client all stay where their state lives;
- takes over a session whose owner is gone (crashed: after its lease; shut down: at once),
  fenced by an epoch, and rebuilds the SDK transport already initialized with the
  client's stored ``initialize`` params (``forward.py``, ``owner.py``, ``_sdk/rehydrate.py``);
- turns DELETE into a CLOSED tombstone, so every node answers 404 from then on.

Lifespan, other routes, 2026-era requests and stateless managers pass through untouched.
The node's lease, heartbeat, SIGTERM hook and bus live in ``node.py``; what it owns in
``ownership.py``; its counters in ``counters.py``.

Nothing is built until the app starts (its lifespan, or else its first request): by then a
forking server (``gunicorn --preload``) has forked, and FastMCP has created its session
manager. Each session manager found then gets its own ``Endpoint`` (``endpoint.py``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import weakref
from typing import Any

from mcp_db._asgi import Message, Receive, Scope, Send
from mcp_db._relay import ENTRY
from mcp_db._sdk import HANDSHAKE_VERSIONS
from mcp_db._sdk.manager import find_session_manager, find_session_managers
from mcp_db._sdk.rehydrate import install
from mcp_db.errors import ConfigError
from mcp_db.event_store import RedisEventStore
from mcp_db.metrics import watch
from mcp_db.middleware.counters import Counters
from mcp_db.middleware.endpoint import Endpoint, Settings, stores_for
from mcp_db.subscriptions import RedisSubscriptionBus

logger = logging.getLogger("mcp_db")

__all__ = ["HANDSHAKE_VERSIONS", "SessionMiddleware", "find_session_manager"]

#: The environment variable a node reads its relay secret from when none is passed.
RELAY_SECRET_ENV = "MCP_DB_RELAY_SECRET"

#: The shortest relay secret a node takes (the core refuses shorter ones too).
MIN_RELAY_SECRET = 16


def _relay_secret(secret: bytes | str | None) -> bytes | None:
    """The relay secret as bytes: the argument, else ``MCP_DB_RELAY_SECRET``, else ``None``."""
    if secret is None:
        secret = os.environ.get(RELAY_SECRET_ENV) or None
    if isinstance(secret, str):
        secret = secret.encode()
    if secret is not None and not isinstance(secret, bytes):
        raise ConfigError(f"relay_secret must be bytes or str, got {type(secret).__name__}")
    if secret is not None and len(secret) < MIN_RELAY_SECRET:
        raise ConfigError(
            f"the relay secret has {len(secret)} bytes; use at least {MIN_RELAY_SECRET} random "
            "bytes, the same on every node (e.g. python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))')"
        )
    return secret


#: (Redis server, prefix, node ID) -> the middleware serving it in this process.
_CLAIMED: weakref.WeakValueDictionary[tuple[str, str, str], SessionMiddleware] = (
    weakref.WeakValueDictionary()
)


def _claim(store: RedisEventStore, node_id: str, middleware: SessionMiddleware) -> None:
    """One middleware per prefix and node: two would share the node's relay channels and
    take each other's requests. ConfigError naming the fix."""
    key = (store.server, store.prefix, node_id)
    holder = _CLAIMED.get(key)
    if holder is not None and holder is not middleware:
        raise ConfigError(
            f"two SessionMiddleware in this process serve prefix {store.prefix!r} of "
            f"{store.server} as node {node_id!r}; they would take each other's relayed "
            "requests. Wrap the app that holds every MCP server once (mounted servers each "
            "get a prefix of their own), or give each middleware a store with its own prefix"
        )
    _CLAIMED[key] = middleware


def _positive_ms(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
    return max(1, int(value * 1000))


class SessionMiddleware:
    """ASGI middleware that lets every node behind a load balancer serve every session.

    Each session has one owner: the node holding its live SDK state (open streams, calls in
    progress, requests to the client awaiting answers). The owner serves its sessions'
    requests straight away; any other node relays them to it through Redis. When the owner
    is gone (its heartbeat lapsed, or it shut down), the next node that needs the session
    takes it over, fenced by an epoch, and rebuilds it from Redis.

    Args:
        app: the SDK's Starlette app (``streamable_http_app()``), FastMCP's
            (``http_app()``), or a Starlette or FastAPI app with MCP apps mounted in it.
        store: the :class:`~mcp_db.RedisEventStore` shared by all nodes; session records
            live under its prefix. It is attached to the session managers when the app
            starts. With several session managers in ``app`` (several mounted servers),
            each gets a prefix of its own under it: ``<prefix>:<path of its route>``.
        session_manager: the SDK's ``StreamableHTTPSessionManager``, if it cannot be found
            inside ``app`` once the app has started.
        node_id: this node's name in session records; default ``<hostname>:<pid>``, read
            when the app starts, so after a fork. Every process needs its own
            (``uvicorn --workers N`` and ``gunicorn --preload`` get that from the PID).
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
        bus: the deployment's :class:`~mcp_db.RedisSubscriptionBus` (the one given to
            ``MCPServer(subscriptions=...)`` on mcp 2.x). Its events then reach
            handshake-era sessions too, on whichever node owns each: list-changed to every
            session, ``ResourceUpdated(uri)`` to those that sent ``resources/subscribe`` for
            ``uri`` (recorded with the session, so it survives a takeover). See
            ``middleware/bridge.py`` and docs/subscriptions.md.
        hand_off: move a session to the node its requests keep arriving at. When one node
            relays a session's requests twice in a row and the owner holds no live state
            of it (no call in flight, no GET stream its client would not open again), the
            owner hands the session to that node (fenced, epoch + 1) instead of serving the
            request, and that node serves it from then on. Behind a balancer that sends a
            session to one node (hash on ``Mcp-Session-Id``), relaying then stops after
            the first requests; behind round robin a session moves at most once per 64 of
            its requests. Like a takeover, a hand-off rebuilds the session on its new node:
            state a server keeps in process memory per session stays behind. ``False``:
            sessions move only when their owner is gone.
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
        bus: RedisSubscriptionBus | None = None,
        hand_off: bool = True,
    ) -> None:
        if not isinstance(store, RedisEventStore):
            raise ConfigError(
                f"SessionMiddleware needs a RedisEventStore shared by all nodes, got {store!r}"
            )
        if bus is not None and not isinstance(bus, RedisSubscriptionBus):
            raise ConfigError(
                f"bus must be a RedisSubscriptionBus (a bus of this process only would reach "
                f"this node's sessions only), got {bus!r}"
            )
        if node_id is not None and (not isinstance(node_id, str) or not node_id):
            raise ConfigError(f"node_id must be a non-empty string, got {node_id!r}")
        self.app = app
        self.store = store
        self.bus = bus
        self._given_manager = session_manager
        self._node_id = node_id
        self._ttl_ms = (
            None
            if session_ttl_seconds is None
            else _positive_ms("session_ttl_seconds", session_ttl_seconds)
        )
        self._lease_ms = _positive_ms("lease_seconds", lease_seconds)
        self._relay_timeout_ms = _positive_ms("relay_timeout_seconds", relay_timeout_seconds)
        self._release_on_sigterm = release_on_sigterm
        self._relay_secret = _relay_secret(relay_secret)
        self._hand_off = bool(hand_off)
        #: Counters for tests and operators (see ``stats()``), of every endpoint.
        self.counters = Counters()
        #: One per stateful session manager in the app, built when the app starts.
        self.endpoints: list[Endpoint] = []
        self._starting: asyncio.Lock | None = None
        self._started = False
        #: Whether the server runs the app's lifespan: then only the lifespan starts it.
        self._has_lifespan = False
        watch(self, "middleware")

    def __getattr__(self, name: str) -> Any:
        # The counters were attributes of the middleware itself (``admissions``, ...).
        if name in Counters.__slots__ and "counters" in self.__dict__:
            return getattr(self.counters, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def node_id(self) -> str:
        """This node's name in session records (``<hostname>:<pid>`` unless given)."""
        return self._node_id or f"{socket.gethostname()}:{os.getpid()}"

    def stats(self) -> dict[str, int]:
        """Counters: ``admitted``, ``refused_initialize``, ``refused_full`` (``initialize``
        answered 503: Redis out of memory), ``rehydrated``, ``taken_over``,
        ``handed_off`` and ``handed_in`` (sessions this node handed to another, and got
        from another, see ``hand_off``),
        ``not_found.<reason>``, ``lock_waits.<lock>``, ``redis_errors.<operation>`` and
        ``relay.<counter>`` (the relay's own), and with a ``bus``, ``bridge.delivered`` and
        ``bridge.dropped`` (notifications to handshake-era sessions). What the
        ``mcp_db.sessions.*``, ``mcp_db.relay.*``, ``mcp_db.locks.contended`` and
        ``mcp_db.redis.errors`` instruments report. Summed over the endpoints."""
        endpoints = list(self.endpoints)
        counts = self.counters.stats([endpoint.relay for endpoint in endpoints])
        for endpoint in endpoints:
            if endpoint.bridge is not None:
                for key, value in endpoint.bridge.stats().items():
                    counts["bridge." + key] = counts.get("bridge." + key, 0) + value
        return counts

    # -- starting and stopping ------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if not self._started and not self._has_lifespan:  # no lifespan: the first request
            await self._start(None)
        if scope["type"] == "http":
            scope[ENTRY] = (scope.get("path"), scope.get("root_path", ""))
        await self.app(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Joins the cluster once the app has started (so its session managers exist and
        can take sessions), and leaves it before the app stops. An app mcp-db cannot serve
        fails its startup, with the reason."""
        self._has_lifespan = True
        state = scope.get("state")

        async def on_receive() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                await self._stop()
            return message

        async def on_send(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                try:
                    await self._start(state)
                except ConfigError as exc:
                    logger.error("mcp-db cannot serve this app: %s", exc)
                    message = {"type": "lifespan.startup.failed", "message": str(exc)}
            await send(message)

        await self.app(scope, on_receive, on_send)

    async def _start(self, lifespan_state: dict[str, Any] | None) -> None:
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._started:
                return
            self.endpoints = self._build()
            self._started = True
            for endpoint in self.endpoints:
                endpoint.node.lifespan_state = lifespan_state
                await endpoint.node.start()

    async def _stop(self) -> None:
        for endpoint in self.endpoints:
            await endpoint.node.release()
            _CLAIMED.pop((endpoint.store.server, endpoint.store.prefix, endpoint.node_id), None)
        # A new lifespan (FastMCP builds new session managers for it) starts afresh.
        self._started = False

    def _build(self) -> list[Endpoint]:
        """An endpoint for each stateful session manager of the app (ConfigError if none)."""
        if self._given_manager is not None:
            managers = [("/", self._given_manager)]
        else:
            managers = find_session_managers(self.app)
        if not managers:
            raise ConfigError(
                "no StreamableHTTPSessionManager found in the app once it started: wrap the "
                "app of streamable_http_app() or http_app() (FastMCP), or a Starlette app "
                "with them mounted and their lifespans run, or pass session_manager="
            )
        stateful = [(path, m) for path, m in managers if not getattr(m, "stateless", False)]
        if len(stateful) > 1 and self.bus is not None:
            raise ConfigError(
                f"bus= with {len(stateful)} MCP servers in one app: each server has its own "
                "subscriptions; wrap each server's app in its own SessionMiddleware instead"
            )
        settings = Settings(
            node_id=self.node_id,
            ttl_ms=self._ttl_ms,
            lease_ms=self._lease_ms,
            relay_timeout_ms=self._relay_timeout_ms,
            release_on_sigterm=self._release_on_sigterm,
            relay_secret=self._relay_secret,
            hand_off=self._hand_off,
        )
        install()  # the SDK can now rebuild sessions initialized (idempotent)
        endpoints = []
        for path, manager, store in stores_for(self.store, stateful):
            _claim(store, settings.node_id, self)
            endpoints.append(
                Endpoint(
                    app=self.app,
                    manager=manager,
                    path=path,
                    store=store,
                    settings=settings,
                    counters=self.counters,
                    bus=self.bus,
                )
            )
        return endpoints
