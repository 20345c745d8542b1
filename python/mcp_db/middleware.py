"""``SessionMiddleware``: any node serves any session.

Wrap the SDK's Starlette app with it on every node, all nodes sharing one Redis::

    store = RedisEventStore("redis://redis:6379/0")
    app = SessionMiddleware(server.streamable_http_app(...), store=store)

For each handshake-era request it:

- records a new session in Redis while the SDK's answer to ``initialize`` goes out, before
  the client can learn the session ID;
- answers 404 for a session that Redis does not know, has closed, or that belongs to
  another principal, on every node, before any transport exists;
- rebuilds the SDK transport of a session this node has not seen (or has reaped for
  idleness), already initialized with the client's stored ``initialize`` params;
- turns DELETE into a CLOSED tombstone, so every node answers 404 from then on.

Lifespan, other routes, 2026-era requests and stateless managers pass through untouched.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio

# Imported up front: on mcp 1.x this also installs the session class every session of this
# process is built from (see ``_sdk/session_v1.py``), rehydrated or not.
from mcp_db._sdk.rehydrate import TooManySessions, forget, rehydrate
from mcp_db.errors import ConfigError, McpDbError
from mcp_db.event_store import RedisEventStore

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
_TOO_MANY = (
    b'{"jsonrpc":"2.0","id":null,"error":{"code":-32603,"message":"Too many open sessions"}}'
)


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
            for name in (
                "session_manager",
                "app",
                "endpoint",
                "routes",
                "router",
                "middleware_stack",
            ):
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


async def _respond(send: Send, status: int, body: bytes = b"", retry_after: bool = False) -> None:
    headers = [(b"content-type", b"application/json")] if body else []
    if retry_after:
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class SessionMiddleware:
    """ASGI middleware that lets every node behind a load balancer serve every session.

    Args:
        app: the SDK's Starlette app (``streamable_http_app()``).
        store: the :class:`~mcp_db.RedisEventStore` shared by all nodes; session records
            live under its prefix. It is attached to the session manager here.
        session_manager: the SDK's ``StreamableHTTPSessionManager``, if it cannot be found
            inside ``app``.
        node_id: this node's name in session records; default ``<hostname>:<pid>``.
        session_ttl_seconds: idle time after which a session expires everywhere; default
            the manager's ``session_idle_timeout`` (1800 s if it has none).
    """

    def __init__(
        self,
        app: Any,
        *,
        store: RedisEventStore,
        session_manager: Any = None,
        node_id: str | None = None,
        session_ttl_seconds: float | None = None,
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
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or ttl <= 0:
            raise ConfigError(f"session_ttl_seconds must be a positive number, got {ttl!r}")
        self.ttl_ms = int(ttl * 1000)
        self.max_body = int(getattr(self.manager, "max_request_body_size", 4 * 1024 * 1024))
        self.records = store._core.sessions()
        self.stateless = bool(getattr(self.manager, "stateless", False))
        self._locks: dict[str, anyio.Lock] = {}
        self._listener: asyncio.Task[None] | None = None
        if not self.stateless:  # a stateless manager has no sessions: nothing to do at all
            store.attach(self.manager)
            self._bus = store._core.bus()
            self._hook()
        #: Sessions this node rebuilt from Redis (for tests and operators).
        self.rehydrations = 0

    def _hook(self) -> None:
        """Runs this middleware's session logic where the SDK's route hands a request to the
        session manager: after the app's own middleware (authentication sets the principal
        there), for the MCP endpoint only. 1.2x and 2.x route through ``asgi_app`` (the
        manager's body-size limit); 1.12 through ``handle_request``."""
        name = "asgi_app" if hasattr(self.manager, "asgi_app") else "handle_request"
        self._inner = getattr(self.manager, name)
        setattr(self.manager, name, self._handle)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._listener is None and scope["type"] == "http" and not self.stateless:
            self._listener = asyncio.get_running_loop().create_task(self._listen())
        await self.app(scope, receive, send)

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One request to the MCP endpoint."""
        if scope["type"] != "http":
            await self._inner(scope, receive, send)
            return
        version = _header(scope, b"mcp-protocol-version")
        if version is not None and version not in HANDSHAKE_VERSIONS:
            await self._inner(scope, receive, send)
            return
        session_id = _header(scope, b"mcp-session-id")
        if session_id is None:
            if scope["method"] == "POST":
                await self._opening(scope, receive, send)
            else:
                await self._inner(scope, receive, send)
            return
        await self._in_session(scope, receive, send, session_id, version)

    # -- a request without a session: maybe initialize -------------------------------------

    async def _opening(self, scope: Scope, receive: Receive, send: Send) -> None:
        body, complete = await self._read_body(receive)
        replay = _Replay(body, receive, more=not complete)
        init = _initialize_params(body) if complete else None
        if init is None:
            await self._inner(scope, replay, send)
            return
        principal = _principal(scope)

        async def record_then_send(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 200:
                session_id = _response_header(message, b"mcp-session-id")
                if session_id:
                    # Recorded before the client can learn the ID (it travels in this message).
                    try:
                        await self.records.create(
                            session_id, self.node_id, principal, json.dumps(init), self.ttl_ms
                        )
                        await self.records.transition(session_id, "INITIALIZED", self.ttl_ms)
                    except McpDbError as exc:
                        # The session lives on this node alone until Redis is back.
                        logger.error("cannot record session %s: %s", session_id[:8], exc)
            await send(message)

        await self._inner(scope, replay, record_then_send)

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
        local = self.manager._server_instances.get(session_id)
        try:
            record = await self.records.lookup(session_id, self.ttl_ms)
        except McpDbError as exc:
            # Redis is unreachable: keep serving what this node can serve on its own.
            if local is None:
                logger.error("cannot admit session %s: %s", session_id[:8], exc)
                await _respond(send, 503, _UNAVAILABLE, retry_after=True)
                return
            logger.warning("serving session %s without its record: %s", session_id[:8], exc)
            await self._inner(scope, receive, send)
            return
        if (
            record is None
            or record.get("state") == "CLOSED"
            or record.get("principal", "") != _principal(scope)
        ):
            if local is not None and (record is None or record.get("state") == "CLOSED"):
                await forget(self.manager, session_id, local)
            await _respond(send, 404, _NOT_FOUND)
            return
        if scope["method"] == "DELETE":
            # CLOSED first: from this moment every node answers 404.
            await self.records.transition(session_id, "CLOSED", self.ttl_ms)
            if local is not None:
                await self._inner(scope, receive, send)  # the SDK terminates its transport
            else:
                await _respond(send, 200)
            await self._bus.publish(f"closed {session_id}")  # others let theirs go
            return
        if local is None:
            try:
                await self._rehydrate(session_id, record, version)
            except _TooMany:
                await _respond(send, 503, _TOO_MANY)
                return
        if record.get("state") == "INITIALIZED":
            await self.records.transition(session_id, "ACTIVE", self.ttl_ms)
        await self._inner(scope, receive, send)

    async def _rehydrate(
        self, session_id: str, record: dict[str, str], version: str | None
    ) -> None:
        lock = self._locks.setdefault(session_id, anyio.Lock())
        try:
            async with lock:
                if session_id in self.manager._server_instances:
                    return  # a concurrent request rebuilt it first
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
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._locks.pop(session_id, None)

    async def _listen(self) -> None:
        """Lets go of local transports of sessions closed on any node."""
        while True:
            message = await self._bus.next()
            if message is None:
                return
            kind, _, session_id = message.partition(" ")
            transport = self.manager._server_instances.get(session_id)
            if kind == "closed" and transport is not None:
                try:
                    await forget(self.manager, session_id, transport)
                except Exception:
                    logger.exception("could not close session %s", session_id[:8])


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


def _initialize_params(body: bytes) -> dict[str, Any] | None:
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    if isinstance(payload, dict) and payload.get("method") == "initialize":
        params = payload.get("params")
        return params if isinstance(params, dict) else None
    return None


def _response_header(message: Message, name: bytes) -> str | None:
    for key, value in message.get("headers", ()):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None
