"""Forwarding a request to the node that owns its session: relaying it (``_relay.py``),
following the session when it moved, waiting out an owner that does not answer, and taking
the session over by claim when the owner is gone."""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio

from mcp_db._asgi import (
    OWNER_BUSY,
    OWNER_LOST,
    PATH,
    TOO_LARGE,
    Replay,
    read_body,
    store_unavailable,
    too_large,
)
from mcp_db._core import RelayOutcome
from mcp_db._relay import Pumped, encode_head, pump
from mcp_db.errors import McpDbError
from mcp_db.middleware.counters import Counters
from mcp_db.middleware.node import Bus, Lease
from mcp_db.middleware.owner import Owner, not_found
from mcp_db.middleware.ownership import Ownership
from mcp_db.middleware.routing import (
    HAND_OFF_CALM,
    MAX_MOVES,
    Claimed,
    GiveUp,
    NotFound,
    Record,
    Request,
    ServeAsOwner,
    TakeOver,
    after_claim,
    after_move,
    silent_owner,
)

logger = logging.getLogger("mcp_db")

#: How often a request is relayed again to an owner that heard nothing but holds its lease.
SILENT_OWNER_RETRY = 0.05

#: What one relay of a request came to (:meth:`Forwarder.relay_once`).
SENT = "sent"  # answered, maybe with an error the owner gave
FAILED = "failed"  # answered 503 here, or the client went away
MOVED = "moved"  # the owner no longer owns the session, and ran nothing
UNHEARD = "unheard"  # nobody took it on, and nobody will: the owner may be gone


class Forwarder:
    """Relays requests to the owners of their sessions, and takes over from gone ones."""

    def __init__(
        self,
        *,
        relay: Any,
        ownership: Any,
        records: Any,
        table: Ownership,
        owner: Owner,
        bus: Bus,
        lease: Lease,
        counters: Counters,
        ttl_ms: int,
        relay_timeout_ms: int,
        max_body: int,
    ) -> None:
        self.relay = relay
        self.own = ownership
        self.records = records
        self.table = table
        self.owner = owner
        self.bus = bus
        self.lease = lease
        self.counters = counters
        self.ttl_ms = ttl_ms
        self.relay_timeout_ms = relay_timeout_ms
        self.max_body = max_body

    async def to_remembered(self, request: Request, owner: str) -> bool:
        """Relays to the owner this node last saw, without reading the record. ``True`` if
        the request is answered; ``False`` if the record must be read (the hint is gone)."""
        receive = request.receive
        body, complete = await read_body(receive, self.max_body)
        request.receive = Replay(body, receive, more=not complete)
        if complete:
            try:
                outcome = await self.relay_once(request, owner, body)
            except McpDbError as exc:
                # The owner may have heard the request: sending it again could run it
                # twice. The client retries.
                self.counters.redis_errors["relay"] += 1
                logger.error(
                    "cannot relay a request of session %s: %s", request.session_id[:8], exc
                )
                await store_unavailable(request.scope).send(request.scope, request.send)
                return True
            if outcome in (SENT, FAILED):
                return True
            self.table.hints.pop(request.session_id, None)
            # Whoever serves it next reads the body again: the relay's watch for the client
            # going away (a response slower than 50 ms) may have taken it from the replay.
            request.receive = Replay(body, receive, more=False)
        return False

    async def forward(self, request: Request, record: Record, owner: str, epoch: int) -> None:
        """Relays the request to the session's owner; takes the session over if the owner
        is gone."""
        scope, send, session_id = request.scope, request.send, request.session_id
        body, complete = await read_body(request.receive, self.max_body)
        if too_large(body, complete):
            # A relayed request travels whole, so it is bounded like the SDK bounds its own.
            await TOO_LARGE.send(scope, send)
            return
        moves = 0
        patience: float | None = None  # until when a silent owner is asked again
        while moves < MAX_MOVES:
            try:
                outcome = await self.relay_once(request, owner, body)
                if outcome in (SENT, FAILED):
                    return
                if outcome == MOVED:
                    moves += 1
                    fresh = await self.records.lookup(session_id, self.ttl_ms)
                    step = after_move(fresh, self.table.node_id)
                    if isinstance(step, NotFound):
                        await not_found(request, self.counters, self.table, step)
                        return
                    assert fresh is not None
                    record = fresh
                    owner, epoch = record.owner, record.epoch
                    if isinstance(step, ServeAsOwner):
                        request.receive = Replay(body, request.receive, more=not complete)
                        await self.owner.serve_as_owner(request, record, step.epoch)
                        return
                    continue
                alive = await self.own.alive(owner)
                now = time.monotonic()
                wait = silent_owner(
                    alive, self.lease.recovering(now), now, patience, self.lease.seconds
                )
                if isinstance(wait, GiveUp):
                    await OWNER_BUSY.send(scope, send)
                    return
                if not isinstance(wait, TakeOver):
                    patience = wait.patience
                    await anyio.sleep(SILENT_OWNER_RETRY)
                    continue
                answer = await self.own.claim(session_id, owner, epoch, self.ttl_ms)
            except McpDbError as exc:
                self.counters.redis_errors["relay"] += 1
                logger.error("cannot relay a request of session %s: %s", session_id[:8], exc)
                await store_unavailable(scope).send(scope, send)
                return
            owner, epoch = answer.owner, answer.epoch
            claim = after_claim(answer.outcome)
            if isinstance(claim, Claimed):
                # Adopted before the next await, so concurrent requests here see the claim.
                owned = self.table.adopt(session_id, epoch, record.principal, record.subscriptions)
                if claim.took_over:
                    owned.calm = HAND_OFF_CALM  # a session moves at most once per calm stretch
                    self.counters.takeovers += 1
                    scope[PATH] = "takeover"
                    await self.bus.taken_over(session_id, self.table.node_id, epoch)
                else:
                    self.counters.lock_waits["claim"] += 1
                request.receive = Replay(body, request.receive, more=not complete)
                await self.owner.serve_as_owner(request, record, epoch)
                return
            if isinstance(claim, NotFound):
                await not_found(request, self.counters, self.table, claim)
                return
            moves += 1  # another node took it over first; relay to that one
            self.counters.lock_waits["claim"] += 1
        await OWNER_BUSY.send(scope, send)

    async def relay_once(self, request: Request, owner: str, body: bytes) -> str:
        """Relays the request to ``owner`` once: ``SENT``, ``FAILED``, ``MOVED`` or
        ``UNHEARD`` (see their definitions). Raises McpDbError when Redis is unreachable."""
        scope, send, session_id = request.scope, request.send, request.session_id
        forwarded = await self.relay.forward(
            owner, session_id, encode_head(scope), body, self.relay_timeout_ms
        )
        outcome, response = forwarded.outcome, forwarded.response
        if response is not None:  # ACCEPTED
            self.counters.relayed_out += 1
            result = await pump(response, request.receive, send)
            if result is Pumped.SENT:
                self.table.note_owner(session_id, owner)
                scope[PATH] = "relayed"
                return SENT
            if result is Pumped.OWNER_LOST:
                await OWNER_LOST.send(scope, send)
                return FAILED
            if result is Pumped.CLIENT_LEFT:
                return FAILED
            if result is Pumped.HANDED_OFF:
                request.handed_in = True  # the record names this node now: it serves
            self.table.hints.pop(session_id, None)
            if result is Pumped.NOT_FOUND:  # the owner counted its 404
                scope[PATH] = "relayed"
                return SENT
            return MOVED
        if outcome == RelayOutcome.OWNER_LOST:
            # The owner took the request on and was then found gone: it may have run, so it
            # is not sent again anywhere. The client decides.
            logger.warning("owner %s of session %s was lost mid-request: %s", owner,
                           session_id[:8], forwarded.reason)  # fmt: skip
            await OWNER_LOST.send(scope, send)
            return FAILED
        if outcome == RelayOutcome.TIMEOUT and await self.own.alive(owner):
            logger.warning(
                "owner %s of session %s did not take a request within %d ms: it is busy, or"
                " it drops this node's frames because their relay secrets differ (its log"
                " then says so)",
                owner,
                session_id[:8],
                self.relay_timeout_ms,
            )
            await OWNER_BUSY.send(scope, send)
            return FAILED
        return UNHEARD
