"""Serving a session as its owner: rebuilding its transport under the per-session lock if
this node does not hold it, keeping its record ACTIVE, DELETE, and handing the session to
the node its requests keep arriving at (``routing.hand_off_to``)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from mcp_db._asgi import (
    CLOSED,
    HANDED_OFF,
    MOVED,
    NOT_FOUND,
    PATH,
    TOO_MANY,
    UNAVAILABLE,
    App,
    Message,
)
from mcp_db._core import ClaimOutcome, Refusal, Transition
from mcp_db._relay import RELAYED
from mcp_db._sdk.rehydrate import TooManySessions, rehydrate
from mcp_db.errors import McpDbError
from mcp_db.middleware.counters import Counters
from mcp_db.middleware.node import Bus
from mcp_db.middleware.ownership import Owned, Ownership
from mcp_db.middleware.routing import HAND_OFF_CALM, NotFound, Record, Request, hand_off_to

logger = logging.getLogger("mcp_db")

#: How long a call keeps its session from being handed on, at most, should its answer go
#: unseen (not stored: Redis was unreachable, say).
UNANSWERED_FOR = 300.0


def call_ids(body: bytes) -> list[str]:
    """The IDs, as the SDK names their streams, of the JSON-RPC requests in a POST's body
    (one message, or a batch); none if it is not JSON-RPC."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return []
    messages = parsed if isinstance(parsed, list) else [parsed]
    return [
        str(m["id"])
        for m in messages
        if isinstance(m, dict) and "method" in m and m.get("id") is not None
    ]


def fenced(done: Transition) -> bool:
    """Whether a record transition (``SessionRecords.transition``) was refused because
    another node owns the session at a higher epoch."""
    return done.refusal == Refusal.FENCED


async def not_found(
    request: Request, counters: Counters, table: Ownership, outcome: NotFound
) -> None:
    """Answers 404 to a request in a session, counted by reason."""
    if outcome.let_go:
        why = "expired" if outcome.reason in ("unknown", "expired") else "closed"
        await table.let_go(request.session_id, why)
    counters.not_found[outcome.reason] += 1
    await NOT_FOUND.send(request.scope, request.send)


class Owner:
    """Serves the sessions this node owns."""

    def __init__(
        self,
        *,
        inner: App,
        manager: Any,
        table: Ownership,
        records: Any,
        bus: Bus,
        counters: Counters,
        ttl_ms: int,
        ownership: Any = None,
        reroute: Callable[[Request], Awaitable[None]] | None = None,
    ) -> None:
        self.inner = inner
        self.manager = manager
        self.table = table
        self.records = records
        self.bus = bus
        self.counters = counters
        self.ttl_ms = ttl_ms
        #: The node's ``Ownership`` (its hand-offs), or ``None``: sessions are not handed off.
        self.ownership = ownership
        #: Routes a request of this node's client again, when its session moved meanwhile.
        self.reroute = reroute
        self._locks: dict[str, anyio.Lock] = {}

    async def serve_as_owner(self, request: Request, record: Record, epoch: int) -> None:
        """Serves a session the record says this node owns, rebuilding it if need be."""
        session_id = request.session_id
        owned = self.table.adopt(session_id, epoch, record.principal, record.subscriptions)
        owned.active = owned.active or record.state == "ACTIVE"
        if request.handed_in:
            request.handed_in = False
            owned.calm = HAND_OFF_CALM
            self.counters.handed_in += 1
        if not self.table.holds(session_id):
            try:
                if await self._rehydrate(session_id, record, request.version):
                    request.scope.setdefault(PATH, "rehydrated")  # a takeover rehydrates too
            except TooManySessions:
                await TOO_MANY.send(request.scope, request.send)
                return
        await self.serve_owned(request, owned)

    async def serve_owned(self, request: Request, owned: Owned) -> None:
        if owned.moving is not None:
            await owned.moving.wait()  # a hand-off of the session is under way
            if self.table.owned.get(request.session_id) is not owned:
                await self._elsewhere(request)
                return
        method = request.scope["method"]
        if method == "DELETE":
            await self._close(request, owned)
            return
        if self.ownership is not None:
            if owned.unanswered:
                now = time.monotonic()
                for call, until in list(owned.unanswered.items()):
                    if until < now:
                        del owned.unanswered[call]
            to = hand_off_to(owned, request.scope.get(RELAYED), request.version)
            if to is not None and await self._hand_off(request, owned, to):
                return
        if not owned.active:
            try:
                await self.records.transition(
                    request.session_id, "ACTIVE", self.ttl_ms, epoch=owned.epoch
                )
                owned.active = True
            except McpDbError as exc:
                # Bookkeeping only: serve the request (this node owns the session and its
                # lease holds) and record the state with a later request.
                self.counters.redis_errors["session_record"] += 1
                logger.warning("cannot mark session %s active: %s", request.session_id[:8], exc)
        owned.used = True
        owned.last_used = time.monotonic()
        listening = method == "GET"
        owned.in_flight += 1
        owned.listening += listening
        try:
            if method == "POST" and self.ownership is not None:
                await self._serve_call(request, owned)
            else:
                await self.inner(request.scope, request.receive, request.send)
        finally:
            owned.in_flight -= 1
            owned.listening -= listening
            owned.last_used = time.monotonic()

    async def _serve_call(self, request: Request, owned: Owned) -> None:
        """Serves a POST (when sessions may be handed off), and holds the session for its
        calls until they are answered (``Owned.unanswered``). The SDK runs a call on after its
        event stream ended without the answer, whether the client cut the stream or the
        server closed it (SSE polling: ``close_sse_stream``), and handing the session on
        would end the call midway. The store tells ``answered`` of every answer the SDK
        sends, in an event stream or in a JSON body."""
        receive = request.receive
        body: list[bytes] = []

        async def receive_noting() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                body.append(message.get("body", b""))
                if not message.get("more_body"):
                    until = time.monotonic() + UNANSWERED_FOR
                    for call in call_ids(b"".join(body)):
                        owned.unanswered[call] = until
            return message

        await self.inner(request.scope, receive_noting, request.send)

    def answered(self, session_id: str, stream: str) -> None:
        """The SDK answered the call on ``stream`` of ``session_id`` (the store tells,
        stored or not): it holds the session no longer."""
        owned = self.table.owned.get(session_id)
        if owned is not None and owned.unanswered:
            owned.unanswered.pop(stream, None)

    async def _hand_off(self, request: Request, owned: Owned, to: str) -> bool:
        """Hands the session to node ``to``, which relayed this request, instead of serving
        it: ``to`` reads the record and serves the request as the owner. Requests arriving
        here meanwhile wait, then go where the session went. ``False`` if Redis could not
        be asked: the request is served here."""
        session_id, scope, send = request.session_id, request.scope, request.send
        owned.moving = moving = anyio.Event()
        try:
            try:
                assert self.ownership is not None
                handed = await self.ownership.hand_off(session_id, to, owned.epoch, self.ttl_ms)
            except McpDbError as exc:
                self.counters.redis_errors["hand_off"] += 1
                logger.warning("cannot hand session %s to %s: %s", session_id[:8], to, exc)
                return False
            if handed.outcome in (ClaimOutcome.CLAIMED, ClaimOutcome.HELD):
                await self.table.let_go(session_id, f"handed to {to} at epoch {handed.epoch}")
                self.table.note_owner(session_id, to)
                self.counters.handed_off += 1
                await HANDED_OFF.send(scope, send)
                await self.bus.taken_over(session_id, to, handed.epoch)
            else:  # closed, expired or taken over meanwhile: the relaying node reads it
                await self.table.let_go(session_id, f"no longer here to hand ({handed.outcome})")
                await MOVED.send(scope, send)
            return True
        finally:
            owned.moving = None
            moving.set()

    async def _elsewhere(self, request: Request) -> None:
        """A request that waited here for its session's hand-off: a relayed one is refused
        as moved (its node reads the record again); this node's own is routed again."""
        if request.relayed or self.reroute is None:
            await MOVED.send(request.scope, request.send)
        else:
            await self.reroute(request)

    async def _close(self, request: Request, owned: Owned) -> None:
        # CLOSED first: from this moment every node answers 404. Without Redis the session
        # cannot be closed everywhere, so it is not closed anywhere: the client retries.
        session_id, scope, send = request.session_id, request.scope, request.send
        try:
            done = await self.records.transition(
                session_id, "CLOSED", self.ttl_ms, epoch=owned.epoch
            )
        except McpDbError as exc:
            self.counters.redis_errors["session_record"] += 1
            logger.warning("cannot close session %s: %s", session_id[:8], exc)
            await UNAVAILABLE.send(scope, send)
            return
        if fenced(done):
            await self.table.let_go(session_id, "taken over before its DELETE")
            await MOVED.send(scope, send)
            return
        self.table.disown(session_id)
        if self.table.holds(session_id):
            await self.inner(scope, request.receive, send)  # the SDK terminates its transport
        else:
            await CLOSED.send(scope, send)
        await self.bus.closed(session_id)  # in case another node holds one

    async def _rehydrate(self, session_id: str, record: Record, version: str | None) -> bool:
        """Rebuilds the session's transport; ``False`` if a concurrent request did."""
        lock = self._locks.setdefault(session_id, anyio.Lock())
        if lock.locked():
            self.counters.lock_waits["rehydrate"] += 1
        try:
            async with lock:
                if self.table.holds(session_id):
                    return False  # a concurrent request rebuilt it first
                await rehydrate(
                    self.manager,
                    session_id,
                    json.loads(record.init),
                    principal=json.loads(record.principal) if record.principal else None,
                    protocol=version or record.protocol,
                )
                self.counters.rehydrations += 1
                return True
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._locks.pop(session_id, None)
