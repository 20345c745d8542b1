"""The local ownership table: the sessions this node owns, at which fencing epoch, and the
owner last seen of sessions it relays to."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from mcp_db._sdk.rehydrate import forget

logger = logging.getLogger("mcp_db")

#: How many sessions owned elsewhere a node remembers the owner of.
MAX_OWNER_HINTS = 100_000


@dataclass(slots=True)
class Owned:
    """A session this node owns: the fencing epoch it owns it at, and what the fast path
    needs to serve it without asking Redis."""

    epoch: int
    principal: str
    #: The node's lease generation when ownership was last confirmed (see ``Lease.gen``).
    gen: int
    active: bool = False
    used: bool = True
    in_flight: int = 0
    last_used: float = 0.0
    #: The resources its client subscribed to (``resources/subscribe``), as recorded.
    subscriptions: set[str] = field(default_factory=set)
    #: Of ``in_flight``, the GET streams (listening, or resuming a stream).
    listening: int = 0
    #: The node that relayed the last requests of the session here, and how many in a row
    #: (``routing.hand_off_to``).
    streak_from: str | None = None
    streak: int = 0
    #: Requests to serve before the session may be handed on again.
    calm: int = 0
    #: Set while the session is being handed to another node: requests here wait for it.
    moving: Any = None
    #: Calls not answered yet, whose POST may be over (the client cut its stream, or the
    #: server closed it) while the SDK still runs them: their stream IDs (the JSON-RPC
    #: request IDs), each with the time until which it counts. Live state, like
    #: ``in_flight``: handing the session on would end them.
    unanswered: dict[str, float] = field(default_factory=dict)


class Ownership:
    """Which sessions this node owns (``owned``) and where it last saw the others
    (``hints``). Adopting a session fences this node's event appends for it at its epoch."""

    __slots__ = ("_fence", "_manager", "_transports", "hints", "lease", "node_id", "owned")

    def __init__(
        self,
        node_id: str,
        lease: Any,
        fence: Callable[[str, int | None], None],
        manager: Any = None,
        transports: dict[str, Any] | None = None,
    ) -> None:
        self.node_id = node_id
        #: The node's ``Lease``: its generation stamps each confirmation of ownership.
        self.lease = lease
        self._fence = fence
        self._manager = manager
        self._transports: dict[str, Any] = transports if transports is not None else {}
        self.owned: dict[str, Owned] = {}
        #: The owner last seen of sessions owned elsewhere: requests go straight there.
        self.hints: dict[str, str] = {}

    def adopt(
        self, session_id: str, epoch: int, principal: str, subscriptions: Iterable[str] = ()
    ) -> Owned:
        """Owns ``session_id`` at ``epoch`` from now on (confirmed under the current lease);
        ``subscriptions`` as its record has them, when it is new here."""
        self.hints.pop(session_id, None)
        owned = self.owned.get(session_id)
        if owned is None or owned.epoch != epoch:
            owned = Owned(
                epoch=epoch,
                principal=principal,
                gen=self.lease.gen,
                subscriptions=set(subscriptions),
            )
            self.owned[session_id] = owned
            self._fence(session_id, epoch)
        owned.gen = self.lease.gen
        return owned

    def disown(self, session_id: str) -> None:
        if self.owned.pop(session_id, None) is not None:
            self._fence(session_id, None)

    def holds(self, session_id: str) -> bool:
        """Whether the SDK holds a live transport of ``session_id`` on this node."""
        return session_id in self._transports

    def transport(self, session_id: str) -> Any:
        return self._transports.get(session_id)

    def note_owner(self, session_id: str, owner: str) -> None:
        """Remembers which node owns a session this node relays to (bounded)."""
        hints = self.hints
        if session_id not in hints and len(hints) >= MAX_OWNER_HINTS:
            del hints[next(iter(hints))]
        hints[session_id] = owner

    async def let_go(self, session_id: str, why: str) -> None:
        """Forgets a session this node no longer owns (closed, expired or taken over), and
        drops its transport if this node holds one."""
        self.disown(session_id)
        transport = self._transports.get(session_id)
        if transport is not None:
            logger.info("node %s lets go of session %s: %s", self.node_id, session_id[:8], why)
            try:
                await forget(self._manager, session_id, transport)
            except Exception:
                logger.exception("could not close session %s", session_id[:8])
