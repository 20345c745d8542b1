"""Where a request in a session goes: pure rules, no I/O, no clock of their own.

The middleware asks in up to three steps. :func:`decide_at_once` runs on every request,
with what this node knows in memory: serve now, refuse, relay to the owner it remembers,
or read the record. :func:`decide_by_record` runs once the record is read, and
:func:`decide_without_record` when Redis could not be read. :func:`after_move`,
:func:`silent_owner` and :func:`after_claim` are the rules of forwarding to an owner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mcp_db._asgi import Receive, Scope, Send
from mcp_db._core import ClaimOutcome, SessionRecord
from mcp_db.middleware.ownership import Owned, Ownership


@dataclass(slots=True)
class Request:
    """One request in a session, as it travels through the middleware."""

    scope: Scope
    receive: Receive
    send: Send
    session_id: str
    #: The ``MCP-Protocol-Version`` header, if any (a handshake-era version).
    version: str | None
    #: Relayed here by another node (which answers its client).
    relayed: bool
    #: Who sent it, as the SDK binds sessions to it (``_sdk.auth.principal``).
    principal: str
    #: The owner handed the session to this node instead of serving the request.
    handed_in: bool = False

    @property
    def method(self) -> str:
        return str(self.scope["method"])


#: The fields of a session record the middleware reads (``SessionRecords.lookup``).
Record = SessionRecord


# -- outcomes --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServeOwned:
    """This node owns the session, holds it, and its lease vouches for it: serve it now."""


@dataclass(frozen=True, slots=True)
class NotFound:
    """404 ``Session not found``, counted by ``reason``; ``let_go`` of any local copy."""

    reason: str
    let_go: bool = False


@dataclass(frozen=True, slots=True)
class AskRemembered:
    """Relay to the owner this node last saw, without reading the record first."""

    owner: str


@dataclass(frozen=True, slots=True)
class ReadRecord:
    """Nothing in memory decides it: read the record."""


@dataclass(frozen=True, slots=True)
class ServeAsOwner:
    """The record names this node: serve the session as its owner at ``epoch``."""

    epoch: int


@dataclass(frozen=True, slots=True)
class Forward:
    """Another node owns the session: relay the request to it (``let_go`` of a local copy)."""

    owner: str
    epoch: int
    let_go: bool = False


@dataclass(frozen=True, slots=True)
class RefuseMoved:
    """Relayed here, but the session is owned elsewhere: 503 ``mcp-db-moved``."""

    owner: str
    epoch: int
    let_go: bool = False


@dataclass(frozen=True, slots=True)
class StoreUnavailable:
    """Redis is unreachable and this node cannot serve the request alone."""


@dataclass(frozen=True, slots=True)
class CannotClose:
    """A DELETE while Redis is unreachable: closed here alone, the session would come back
    to life on another node once Redis is back. 503, and the client retries."""


@dataclass(frozen=True, slots=True)
class ServeUnrecorded:
    """Redis is unreachable, but this node holds the session: serve it anyway."""


@dataclass(frozen=True, slots=True)
class WaitForOwner:
    """Nobody heard the relayed request, but the owner may still be alive: ask again
    after a short wait, until ``patience`` (a monotonic time)."""

    patience: float


@dataclass(frozen=True, slots=True)
class GiveUp:
    """The owner holds its lease but does not answer: 503 ``Session owner not answering``."""


@dataclass(frozen=True, slots=True)
class TakeOver:
    """The owner is gone: claim the session from it."""


@dataclass(frozen=True, slots=True)
class Claimed:
    """This node owns the session now. ``took_over``: it won the claim itself, rather than
    a concurrent request of this node."""

    took_over: bool


@dataclass(frozen=True, slots=True)
class ClaimedElsewhere:
    """Another node claimed the session first: relay to that one."""


SERVE_OWNED = ServeOwned()
READ_RECORD = ReadRecord()
STORE_UNAVAILABLE = StoreUnavailable()
CANNOT_CLOSE = CannotClose()
SERVE_UNRECORDED = ServeUnrecorded()
GIVE_UP = GiveUp()
TAKE_OVER = TakeOver()
CLAIMED_ELSEWHERE = ClaimedElsewhere()
NOT_FOUND_OTHER_PRINCIPAL = NotFound("other_principal")
#: Relays of one request to successive owners before the client gets 503.
MAX_MOVES = 3
#: Requests of a session relayed in a row from one node that make its owner hand the
#: session to that node (``hand_off_to``).
HAND_OFF_AFTER = 2
#: Requests a session's new owner serves before it may hand the session on again. Behind
#: round robin the next node is anybody's guess, so without it a session would follow
#: every lucky streak; with it, a session moves at most once per this many requests.
HAND_OFF_CALM = 64
#: The protocol version from which a client listens again, with ``Last-Event-ID``, when the
#: server ends its GET stream (SSE polling, protocol 2025-11-25). An older client would stop
#: hearing the server: its open GET stream keeps the session where it is.
RELISTENING_FROM = "2025-11-25"


# -- the rules -------------------------------------------------------------------------------


def decide_at_once(
    request: Request, owned: Owned | None, local: bool, table: Ownership, lease: Any, now: float
) -> ServeOwned | NotFound | AskRemembered | ReadRecord:
    """What this node can decide without Redis. ``owned``: its entry in the ownership
    table; ``local``: it holds the session's transport; ``lease``: the node's ``Lease``."""
    if (
        owned is not None
        and local
        and owned.gen == lease.gen
        and now < lease.until
        and now - owned.last_used < lease.idle_limit
    ):
        # This node owns the session, its lease holds and the session was used within its
        # TTL: nobody else can have taken it over, closed it (that goes through the owner)
        # or let it expire (the owner slides its TTL on every heartbeat).
        if owned.principal != request.principal:
            return NOT_FOUND_OTHER_PRINCIPAL
        return SERVE_OWNED
    if owned is None and not request.relayed:
        owner = table.hints.get(request.session_id)
        if owner is not None:
            # Another node owned the session when this one last looked. The owner checks
            # everything the record would tell (it answers 404 itself, or refuses as moved,
            # and then the record is read here).
            return AskRemembered(owner)
    return READ_RECORD


def decide_by_record(
    request: Request,
    record: Record | None,
    node_id: str,
    held_before: bool,
    owned: Owned | None,
    held: bool,
) -> NotFound | ServeAsOwner | Forward | RefuseMoved:
    """What the record says. ``held_before``: this node owned or held the session before
    reading it; ``owned`` and ``held``: what it owns and holds now (a concurrent request
    may have claimed the session meanwhile)."""
    if record is None:
        # Expired if this node held it; otherwise unknown (or expired elsewhere).
        return NotFound("expired" if held_before else "unknown", let_go=True)
    if record.state == "CLOSED":
        return NotFound("closed", let_go=True)
    if record.principal != request.principal:
        return NOT_FOUND_OTHER_PRINCIPAL
    owner, epoch = record.owner, record.epoch
    if owned is not None and owned.epoch >= epoch:
        # This node claimed the session after the record was read: the read is stale.
        owner, epoch = node_id, owned.epoch
    if owner == node_id:
        return ServeAsOwner(epoch)
    let_go = owned is not None or held
    if request.relayed:
        # Relayed here, but ownership moved on the way: the client retries.
        return RefuseMoved(owner, epoch, let_go)
    return Forward(owner, epoch, let_go)


def decide_without_record(
    request: Request, owned: Owned | None, local: bool
) -> StoreUnavailable | NotFound | CannotClose | ServeUnrecorded:
    """Redis cannot be read: keep serving what this node can serve on its own."""
    if not local:
        return STORE_UNAVAILABLE
    if owned is not None and owned.principal != request.principal:
        return NOT_FOUND_OTHER_PRINCIPAL
    if request.method == "DELETE":
        return CANNOT_CLOSE
    return SERVE_UNRECORDED


def after_move(record: Record | None, node_id: str) -> NotFound | ServeAsOwner | Forward:
    """The owner refused a relayed request as moved, and the record was read again."""
    if record is None:
        return NotFound("expired")
    if record.state == "CLOSED":
        return NotFound("closed")
    if record.owner == node_id:  # it moved here meanwhile
        return ServeAsOwner(record.epoch)
    return Forward(record.owner, record.epoch)


def silent_owner(
    alive: bool, recovering: bool, now: float, patience: float | None, lease_seconds: float
) -> WaitForOwner | GiveUp | TakeOver:
    """Nobody heard a relayed request. If the owner's lease holds, its subscription is
    coming back (Redis restarted, a cluster's pub/sub hub moved), or it crashed and the
    lease has yet to run out. If this node itself just got Redis back (``recovering``),
    the owner's lease may have lapsed in the outage while it lived on. Either way, ask again
    until the lease has had time to lapse (or to be renewed). Nothing ran: nobody heard it.
    Otherwise the owner is gone: take the session over."""
    if not alive and not recovering:
        return TAKE_OVER
    patience = patience or now + lease_seconds + 0.5
    if now >= patience:
        if alive:
            return GIVE_UP
        patience = now + lease_seconds  # still recovering: wait on
    return WaitForOwner(patience)


def after_claim(outcome: ClaimOutcome) -> Claimed | NotFound | ClaimedElsewhere:
    """What a claim of the session from a gone owner came to (``Ownership.claim``)."""
    if outcome == ClaimOutcome.CLAIMED:
        return Claimed(took_over=True)
    if outcome == ClaimOutcome.HELD:  # a concurrent request here claimed it first
        return Claimed(took_over=False)
    if outcome == ClaimOutcome.CLOSED:
        return NotFound("closed")
    if outcome == ClaimOutcome.MISSING:
        return NotFound("expired")
    return CLAIMED_ELSEWHERE  # MOVED: another node took it over first


def hand_off_to(owned: Owned, relayed_from: str | None, version: str | None) -> str | None:
    """Counts one request the owner is about to serve, and says to which node to hand the
    session instead, if any: the node that relayed its last ``HAND_OFF_AFTER`` requests in
    a row, once the session is calm, and only while the owner holds no live state of it.
    Live state is a request in flight (a call, or a server→client request awaiting its
    answer, which belongs to one; a call whose event stream ended before its answer still
    runs, see ``Owned.unanswered``), or a GET stream whose client would not listen again.
    ``relayed_from``: the node that relayed the request (``None``: this node's own client);
    ``version``: its ``MCP-Protocol-Version``."""
    if owned.calm:
        owned.calm -= 1
    if relayed_from is None:
        owned.streak_from, owned.streak = None, 0
        return None
    if relayed_from != owned.streak_from:
        owned.streak_from, owned.streak = relayed_from, 0
    owned.streak += 1
    if owned.streak < HAND_OFF_AFTER or owned.calm:
        return None
    if owned.in_flight > owned.listening or owned.unanswered:
        return None  # a call in flight: the next request asks again
    if owned.listening and (version is None or version < RELISTENING_FROM):
        return None
    return relayed_from
