"""Admission of ``initialize``: a POST without a session may open one. The SDK creates the
session; the record is written while the SDK's answer goes out, before the client can
learn the session ID, so no session exists that other nodes could not find."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from mcp_db._asgi import (
    FULL,
    PATH,
    TOO_LARGE,
    UNAVAILABLE,
    App,
    Message,
    Receive,
    Replay,
    Response,
    Scope,
    Send,
    invalid_initialize,
    read_body,
    response_header,
    too_large,
)
from mcp_db._sdk import valid_initialize_params
from mcp_db._sdk.auth import principal as principal_of
from mcp_db.errors import McpDbError, RedisOutOfMemoryError
from mcp_db.middleware.counters import Counters
from mcp_db.middleware.ownership import Ownership

logger = logging.getLogger("mcp_db")


@dataclass(frozen=True, slots=True)
class PassThrough:
    """Not an ``initialize`` (the SDK answers it, a malformed body included)."""


@dataclass(frozen=True, slots=True)
class TooLarge:
    """The body is past the SDK's limit: 413, before any session exists."""


@dataclass(frozen=True, slots=True)
class InvalidParams:
    """An ``initialize`` whose params the SDK would refuse: 400, and no session."""

    response: Response


@dataclass(frozen=True, slots=True)
class Initialize:
    """An ``initialize`` the SDK will accept: record the session it opens."""

    params: Any


PASS_THROUGH = PassThrough()
TOO_LARGE_BODY = TooLarge()


def initialize_request(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON-RPC ``initialize`` request, or ``None`` for anything else."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than Python's stack
        return None
    if isinstance(payload, dict) and payload.get("method") == "initialize" and "id" in payload:
        return payload
    return None


def admit(body: bytes, complete: bool) -> PassThrough | TooLarge | InvalidParams | Initialize:
    """What to do with a POST without a session, given its body as read up to the limit."""
    if too_large(body, complete):
        # Past the SDK's limit (mcp 1.12 has none): refused before any session exists, so
        # none can go unrecorded.
        return TOO_LARGE_BODY
    request = initialize_request(body) if complete else None
    if request is None:
        return PASS_THROUGH
    params = request.get("params")
    if not valid_initialize_params(params):
        # The SDK would create a session and only then refuse its params: a session with an
        # ID and no record, that no node could serve. Refused here, on any node.
        return InvalidParams(invalid_initialize(request.get("id")))
    return Initialize(params)


def opened_session(message: Message) -> str | None:
    """The session the SDK opened, if ``message`` starts its 200 answer to ``initialize``."""
    if message["type"] == "http.response.start" and message["status"] == 200:
        return response_header(message, b"mcp-session-id") or None
    return None


class Admission:
    """Opens sessions: records each one the SDK creates, or refuses it."""

    def __init__(
        self,
        *,
        inner: App,
        table: Ownership,
        records: Any,
        counters: Counters,
        spawn: Callable[[Coroutine[Any, Any, Any]], None],
        ttl_ms: int,
        redis_timeout: float,
        max_body: int,
    ) -> None:
        self.inner = inner
        self.table = table
        self.records = records
        self.counters = counters
        self.spawn = spawn
        self.ttl_ms = ttl_ms
        self.redis_timeout = redis_timeout
        self.max_body = max_body
        #: When an ``initialize`` refused for Redis out of memory was last logged (``None``
        #: once a session was recorded again).
        self._full_logged: float | None = None

    async def opening(self, scope: Scope, receive: Receive, send: Send) -> None:
        body, complete = await read_body(receive, self.max_body)
        replay = Replay(body, receive, more=not complete)
        step = admit(body, complete)
        if isinstance(step, PassThrough):
            scope[PATH] = "passthrough"
            await self.inner(scope, replay, send)
            return
        if isinstance(step, TooLarge):
            await TOO_LARGE.send(scope, send)
            return
        if isinstance(step, InvalidParams):
            self.counters.refused_initialize += 1
            await step.response.send(scope, send)
            return
        scope[PATH] = "initialize"
        init = step.params
        principal = principal_of(scope)
        unrecorded: str | None = None
        full = False

        async def record_then_send(message: Message) -> None:
            nonlocal unrecorded, full
            if unrecorded is not None:
                return  # the SDK's answer is replaced by the 503 below
            session_id = opened_session(message)
            if session_id is not None:
                # Recorded before the client can learn the ID (it travels in this message).
                try:
                    # Both writes within one operation's bound, as documented.
                    await asyncio.wait_for(
                        self._record(session_id, principal, init), self.redis_timeout
                    )
                except (McpDbError, asyncio.TimeoutError) as exc:
                    # A session no other node could find (and that this one would answer
                    # 404 for once Redis is back) is worse than none: refuse it, and the
                    # client opens one again later.
                    self.counters.redis_errors["session_record"] += 1
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
                    # Redis may still run the queued writes (it was paused, say): then the
                    # record of a session nobody learned must not stay behind.
                    self.spawn(self._forget_unlearned(session_id))
                    return
                if self._full_logged is not None:
                    self._full_logged = None
                    logger.warning("Redis has room again: new sessions are admitted")
                self.counters.admissions += 1
                self.table.adopt(session_id, 1, principal)
            await send(message)

        await self.inner(scope, replay, record_then_send)
        if unrecorded is not None:
            # The transport goes before the client hears, so nothing of it outlives the 503.
            await self.table.let_go(unrecorded, "its record could not be written")
            await (FULL if full else UNAVAILABLE).send(scope, send)

    def _redis_full(self, exc: McpDbError) -> None:
        """Counts an ``initialize`` refused because Redis is out of memory; logs the first
        of an episode (until a session is recorded again; at most once a minute), not every
        request."""
        self.counters.refused_full += 1
        now = time.monotonic()
        if self._full_logged is None or now - self._full_logged >= 60:
            self._full_logged = now
            logger.error(
                "Redis is out of memory (maxmemory): new sessions get 503 until it has room;"
                " sessions that exist go on. %s",
                exc,
            )

    async def _record(self, session_id: str, principal: str, init: Any) -> None:
        node_id = self.table.node_id
        await self.records.create(session_id, node_id, principal, json.dumps(init), self.ttl_ms)
        await self.records.transition(session_id, "INITIALIZED", self.ttl_ms)

    async def _forget_unlearned(self, session_id: str) -> None:
        """Deletes the record of a session refused with 503, should Redis write it late;
        retried (Redis executes a connection's commands in order, so this comes after the
        create if that ran at all) until Redis answers, for up to a minute."""
        delay, deadline = 0.5, time.monotonic() + 60
        while True:
            try:
                if await self.records.forget_unlearned(session_id, self.table.node_id):
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
