"""One MCP endpoint served across nodes: a session manager, and every part a request to it
goes through. ``SessionMiddleware`` builds one per session manager in the app when the app
starts (after a fork, after FastMCP's lifespan has created its manager).

Each endpoint has its own Redis prefix (the store's; with several mounted servers, one
under it per server), so its session records, relay and node lease are its own: equal
session IDs of two servers never meet.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from mcp_db._asgi import (
    MOVED,
    PATH,
    UNAVAILABLE,
    Receive,
    Scope,
    Send,
    mcp_headers,
    store_unavailable,
)
from mcp_db._relay import RELAYED
from mcp_db._sdk import HANDSHAKE_VERSIONS, request_keys
from mcp_db._sdk.auth import principal
from mcp_db._sdk.manager import hook_entry_point, live_transports
from mcp_db._sdk.resources import install as install_subscriptions
from mcp_db.errors import ConfigError, McpDbError
from mcp_db.event_store import RedisEventStore
from mcp_db.metrics import request_duration
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


@dataclass(frozen=True)
class Settings:
    """What the middleware was configured with, shared by its endpoints."""

    node_id: str
    ttl_ms: int | None  # None: the manager's own idle timeout
    lease_ms: int
    relay_timeout_ms: int
    release_on_sigterm: bool
    relay_secret: bytes | None
    hand_off: bool = True


def stores_for(
    store: RedisEventStore, managers: list[tuple[str, Any]]
) -> Iterator[tuple[str, Any, RedisEventStore]]:
    """Each session manager with the store it keeps its sessions in: ``store`` itself for
    the only one; with several (mounted servers), a store under ``store``'s prefix per
    route path, so their sessions stay apart even with equal IDs. ConfigError if two
    servers share a path (no name to keep them apart by)."""
    if len(managers) == 1:
        path, manager = managers[0]
        yield path, manager, store
        return
    paths = [path for path, _ in managers]
    for path in paths:
        if paths.count(path) > 1:
            raise ConfigError(
                f"two MCP servers in the app are both at {path!r}: mount them under different "
                "paths, so each has its sessions under a prefix of its own"
            )
    for path, manager in managers:
        yield path, manager, store._scoped(_key_safe(path), attached_as=store)


def _key_safe(path: str) -> str:
    """A route path as part of a Redis key prefix (no ``{}``: Redis Cluster hash tags)."""
    return re.sub(r"[^A-Za-z0-9/._-]", "_", path)


class Endpoint:
    """A stateful session manager, served on every node: admission, routing, serving as
    owner, forwarding and this node's life for it."""

    def __init__(
        self,
        *,
        app: Any,
        manager: Any,
        path: str,
        store: RedisEventStore,
        settings: Settings,
        counters: Counters,
        bus: RedisSubscriptionBus | None,
    ) -> None:
        self.path = path
        self.manager = manager
        self.store = store
        self.node_id = settings.node_id
        ttl_ms = settings.ttl_ms
        if ttl_ms is None:
            ttl_ms = int((getattr(manager, "session_idle_timeout", None) or 1800) * 1000)
        self.ttl_ms = ttl_ms
        self.counters = counters
        deployment = store.deployment
        self.records = records = deployment.sessions()
        # First: a bad secret raises before anything is attached or started.
        self.relay = relay = deployment.relay(self.node_id, secret=settings.relay_secret)
        store.attach(manager)
        max_body = int(getattr(manager, "max_request_body_size", 4 * 1024 * 1024))
        self._durations = request_duration()
        # Where the SDK's route hands a request to the session manager: after the app's own
        # middleware (authentication sets the principal there), for the MCP endpoint only.
        self._inner = inner = hook_entry_point(manager, self.handle)
        # Past this idle time the owner asks Redis again (the record may have expired).
        self.lease = lease = Lease(self.node_id, settings.lease_ms / 1000, ttl_ms / 1000 * 0.9)
        self._transports = live_transports(manager)
        self.table = table = Ownership(
            self.node_id, lease, deployment.fence, manager, self._transports
        )
        news = Bus(deployment.bus(), counters)
        self.bridge: Bridge | None = None
        if bus is not None:
            self.bridge = Bridge(
                bus=bus,
                kind_of=kind_of,
                table=table,
                records=records,
                counters=counters,
                lease=lease,
            )
            install_subscriptions(manager.app, self.bridge.record)
        ownership = deployment.ownership(self.node_id, settings.lease_ms)
        self.node = Node(
            app=app,
            lease=lease,
            table=table,
            bus=news,
            relay=relay,
            ownership=ownership,
            counters=counters,
            lease_ms=settings.lease_ms,
            ttl_ms=ttl_ms,
            release_on_sigterm=settings.release_on_sigterm,
            bridge=self.bridge,
            server=manager.app,
            request_keys=request_keys(manager),
        )
        self._admission = Admission(
            inner=inner,
            table=table,
            records=records,
            counters=counters,
            spawn=self.node.spawn,
            ttl_ms=ttl_ms,
            redis_timeout=store.timeout_seconds,
            max_body=max_body,
        )
        self._owner = owner = Owner(
            inner=inner,
            manager=manager,
            table=table,
            records=records,
            bus=news,
            counters=counters,
            ttl_ms=ttl_ms,
            ownership=ownership if settings.hand_off else None,
            reroute=self._in_session,
        )
        if settings.hand_off:
            store._on_answer(owner.answered)  # calls whose client left hold their session
        self._forwarder = Forwarder(
            relay=relay,
            ownership=ownership,
            records=records,
            table=table,
            owner=owner,
            bus=news,
            lease=lease,
            counters=counters,
            ttl_ms=ttl_ms,
            relay_timeout_ms=settings.relay_timeout_ms,
            max_body=max_body,
        )

    # -- requests ---------------------------------------------------------------------------

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
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
        table = self.table
        owned = table.owned.get(session_id)
        local = session_id in self._transports
        step = decide_at_once(request, owned, local, table, self.lease, time.monotonic())
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
            await not_found(request, self.counters, self.table, step)
        elif step is CANNOT_CLOSE:
            await UNAVAILABLE.send(scope, send)
        else:
            logger.warning("serving session %s without its record: %s", request.session_id[:8], exc)
            await self._inner(scope, request.receive, send)
