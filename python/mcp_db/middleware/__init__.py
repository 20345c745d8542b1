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
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

from mcp_db._asgi import (
    MOVED,
    PATH,
    UNAVAILABLE,
    Message,
    Receive,
    Scope,
    Send,
    mcp_headers,
    store_unavailable,
)
from mcp_db._core import Deployment
from mcp_db._relay import RELAYED
from mcp_db._sdk import HANDSHAKE_VERSIONS, request_keys
from mcp_db._sdk.auth import principal
from mcp_db._sdk.manager import find_session_manager, hook_entry_point, live_transports
from mcp_db._sdk.rehydrate import install
from mcp_db._sdk.resources import install as install_subscriptions
from mcp_db.errors import ConfigError, McpDbError
from mcp_db.event_store import RedisEventStore
from mcp_db.metrics import request_duration, watch
from mcp_db.middleware.admission import Admission
from mcp_db.middleware.bridge import Bridge
from mcp_db.middleware.counters import Counters, attributes
from mcp_db.middleware.forward import Forwarder
from mcp_db.middleware.node import Bus, Lease, Node
from mcp_db.middleware.owner import Owner, not_found
from mcp_db.middleware.ownership import Ownership
from mcp_db.middleware.routing import (
    CANNOT_CLOSE,
    SERVE_OWNED,
    STORE_UNAVAILABLE,
    AskRemembered,
    NotFound,
    RefuseMoved,
    Request,
    ServeAsOwner,
    decide_at_once,
    decide_by_record,
    decide_without_record,
)
from mcp_db.subscriptions import RedisSubscriptionBus, kind_of

logger = logging.getLogger("mcp_db")

__all__ = ["HANDSHAKE_VERSIONS", "SessionMiddleware", "find_session_manager"]

#: The environment variable a node reads its relay secret from when none is passed.
RELAY_SECRET_ENV = "MCP_DB_RELAY_SECRET"


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
        bus: the deployment's :class:`~mcp_db.RedisSubscriptionBus` (the one given to
            ``MCPServer(subscriptions=...)`` on mcp 2.x). Its events then reach
            handshake-era sessions too, on whichever node owns each: list-changed to every
            session, ``ResourceUpdated(uri)`` to those that sent ``resources/subscribe`` for
            ``uri`` (recorded with the session, so it survives a takeover). See
            ``middleware/bridge.py`` and docs/subscriptions.md.
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
        self.bus = bus
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
        self.release_on_sigterm = release_on_sigterm
        self.max_body = int(getattr(self.manager, "max_request_body_size", 4 * 1024 * 1024))
        deployment = store.deployment
        self.records = deployment.sessions()
        self.stateless = bool(getattr(self.manager, "stateless", False))
        #: Counters for tests and operators (see ``stats()``).
        self.counters = Counters()
        self._durations = request_duration()
        self._relay: Any = None
        if not self.stateless:  # a stateless manager has no sessions: nothing to do at all
            # First: a bad secret raises before anything is attached or started.
            self._relay = deployment.relay(self.node_id, secret=_relay_secret(relay_secret))
            store.attach(self.manager)
            self._assemble(deployment)
            watch(self, "middleware")

    def _assemble(self, deployment: Deployment) -> None:
        """Builds the parts a request goes through, and puts them in the SDK's route."""
        install()  # the SDK can now rebuild sessions initialized (idempotent)
        # Where the SDK's route hands a request to the session manager: after the app's own
        # middleware (authentication sets the principal there), for the MCP endpoint only.
        self._inner = hook_entry_point(self.manager, self._handle)
        counters = self.counters
        # Past this idle time the owner asks Redis again (the record may have expired).
        self._lease = Lease(self.node_id, self.lease_ms / 1000, self.ttl_ms / 1000 * 0.9)
        self._transports = live_transports(self.manager)
        self._table = table = Ownership(
            self.node_id, self._lease, deployment.fence, self.manager, self._transports
        )
        self._bus = Bus(deployment.bus(), counters)
        self._bridge: Bridge | None = None
        if self.bus is not None:
            self._bridge = Bridge(
                bus=self.bus,
                kind_of=kind_of,
                table=table,
                records=self.records,
                counters=counters,
                lease=self._lease,
            )
            install_subscriptions(self.manager.app, self._bridge.record)
        ownership = deployment.ownership(self.node_id, self.lease_ms)
        self._node = Node(
            app=self.app,
            lease=self._lease,
            table=table,
            bus=self._bus,
            relay=self._relay,
            ownership=ownership,
            counters=counters,
            lease_ms=self.lease_ms,
            ttl_ms=self.ttl_ms,
            release_on_sigterm=self.release_on_sigterm,
            bridge=self._bridge,
            server=self.manager.app,
            request_keys=request_keys(self.manager),
        )
        self._admission = Admission(
            inner=self._inner,
            table=table,
            records=self.records,
            counters=counters,
            spawn=self._node.spawn,
            ttl_ms=self.ttl_ms,
            redis_timeout=self.store.timeout_seconds,
            max_body=self.max_body,
        )
        self._owner = Owner(
            inner=self._inner,
            manager=self.manager,
            table=table,
            records=self.records,
            bus=self._bus,
            counters=counters,
            ttl_ms=self.ttl_ms,
        )
        self._forwarder = Forwarder(
            relay=self._relay,
            ownership=ownership,
            records=self.records,
            table=table,
            owner=self._owner,
            bus=self._bus,
            lease=self._lease,
            counters=counters,
            ttl_ms=self.ttl_ms,
            relay_timeout_ms=self.relay_timeout_ms,
            max_body=self.max_body,
        )

    def __getattr__(self, name: str) -> Any:
        # The counters were attributes of the middleware itself (``admissions``, ...).
        if name in Counters.__slots__ and "counters" in self.__dict__:
            return getattr(self.counters, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def stats(self) -> dict[str, int]:
        """Counters: ``admitted``, ``refused_initialize``, ``refused_full`` (``initialize``
        answered 503: Redis out of memory), ``rehydrated``, ``taken_over``,
        ``not_found.<reason>``, ``lock_waits.<lock>``, ``redis_errors.<operation>`` and
        ``relay.<counter>`` (the relay's own), and with a ``bus``, ``bridge.delivered`` and
        ``bridge.dropped`` (notifications to handshake-era sessions). What the
        ``mcp_db.sessions.*``, ``mcp_db.relay.*``, ``mcp_db.locks.contended`` and
        ``mcp_db.redis.errors`` instruments report."""
        counts = self.counters.stats(self._relay)
        bridge = getattr(self, "_bridge", None)
        if bridge is not None:
            for key, value in bridge.stats().items():
                counts["bridge." + key] = value
        return counts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.stateless:
            await self.app(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
        else:
            if not self._node.started:
                await self._node.start()
            await self.app(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Joins the cluster once the app has started (so the manager can take sessions),
        and leaves it before the app stops."""
        node = self._node
        node.lifespan_state = scope.get("state")

        async def on_receive() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                await node.release()
            return message

        async def on_send(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                await node.start()
            await send(message)

        await self.app(scope, on_receive, on_send)

    # -- requests ---------------------------------------------------------------------------

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One request to the MCP endpoint, timed by the path it takes."""
        if scope["type"] != "http":
            await self._inner(scope, receive, send)
            return
        started = time.perf_counter()
        try:
            version, session_id = mcp_headers(scope)
            if version is not None and version not in HANDSHAKE_VERSIONS:
                scope[PATH] = "passthrough"
                await self._inner(scope, receive, send)
                return
            if session_id is not None:
                relayed = scope.get(RELAYED) is not None
                who = principal(scope)
                await self._in_session(
                    Request(scope, receive, send, session_id, version, relayed, who)
                )
            elif scope["method"] == "POST":
                await self._admission.opening(scope, receive, send)
            else:
                scope[PATH] = "passthrough"
                await self._inner(scope, receive, send)
        finally:
            self._durations.record(time.perf_counter() - started, attributes(scope))

    async def _in_session(self, request: Request) -> None:
        """A request in a session: served here, refused, relayed, or taken over."""
        session_id = request.session_id
        table = self._table
        owned = table.owned.get(session_id)
        local = session_id in self._transports
        step = decide_at_once(request, owned, local, table, self._lease, time.monotonic())
        if step is SERVE_OWNED:
            assert owned is not None
            await self._owner.serve_owned(request, owned)
            return
        if isinstance(step, NotFound):
            await not_found(request, self.counters, table, step)
            return
        if isinstance(step, AskRemembered):
            if await self._forwarder.to_remembered(request, step.owner):
                return
        try:
            record = await self.records.lookup(session_id, self.ttl_ms)
        except McpDbError as exc:
            self.counters.redis_errors["session_lookup"] += 1
            await self._without_record(request, owned, local, exc)
            return
        found = decide_by_record(
            request,
            record,
            self.node_id,
            held_before=owned is not None or local,
            owned=table.owned.get(session_id),  # again: a concurrent request may have claimed it
            held=session_id in self._transports,
        )
        if isinstance(found, NotFound):
            await not_found(request, self.counters, table, found)
            return
        assert record is not None
        if isinstance(found, ServeAsOwner):
            await self._owner.serve_as_owner(request, record, found.epoch)
            return
        if found.let_go:
            await table.let_go(session_id, f"owned by {found.owner} at epoch {found.epoch}")
        if isinstance(found, RefuseMoved):
            await MOVED.send(request.scope, request.send)
            return
        await self._forwarder.forward(request, record, found.owner, found.epoch)

    async def _without_record(
        self, request: Request, owned: Any, local: bool, exc: McpDbError
    ) -> None:
        """Redis is unreachable: keep serving what this node can serve on its own."""
        scope, send = request.scope, request.send
        step = decide_without_record(request, owned, local)
        if step is STORE_UNAVAILABLE:
            logger.error("cannot admit session %s: %s", request.session_id[:8], exc)
            await store_unavailable(scope).send(scope, send)
        elif isinstance(step, NotFound):
            await not_found(request, self.counters, self._table, step)
        elif step is CANNOT_CLOSE:
            await UNAVAILABLE.send(scope, send)
        else:
            logger.warning("serving session %s without its record: %s", request.session_id[:8], exc)
            await self._inner(scope, request.receive, send)
