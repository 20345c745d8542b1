"""One publish for both eras: the subscription bus's events reach this node's
handshake-era sessions, as the SDK would send them on one node.

The bus (:class:`~mcp_db.RedisSubscriptionBus`) hands every event to every node once; each
node delivers it to the sessions it owns and holds:

- a list-changed goes to every one of them;
- a ``ResourceUpdated(uri)`` only to those whose client subscribed to ``uri``
  (``resources/subscribe``) and has not unsubscribed.

Subscriptions are recorded with the session record, through the SDK's own handlers
(``_sdk/resources.py``), so the owner after a takeover knows them, and a DELETE or an
expiry drops them with the record. A notification goes through the session's transport as
its own ``ServerSession.send_*`` would: the event store keeps it, and a GET stream that
reconnects with ``Last-Event-ID`` replays it.

Each session has its own queue and sender, so a client that does not read stalls only
itself; its queue is bounded in bytes, and past that the oldest notification is dropped
and counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from mcp_db._core import EventKind, Subscribed
from mcp_db._sdk.resources import Refused, notification, notify
from mcp_db.errors import ConfigError, McpDbError
from mcp_db.middleware.counters import Counters
from mcp_db.middleware.ownership import Ownership

logger = logging.getLogger("mcp_db")

#: JSON-RPC error codes of a refused subscription.
INVALID_PARAMS, INTERNAL_ERROR = -32602, -32603

#: The notification each kind of event becomes.
METHODS = {
    EventKind.TOOLS_LIST_CHANGED: "notifications/tools/list_changed",
    EventKind.PROMPTS_LIST_CHANGED: "notifications/prompts/list_changed",
    EventKind.RESOURCES_LIST_CHANGED: "notifications/resources/list_changed",
    EventKind.RESOURCE_UPDATED: "notifications/resources/updated",
}
#: What one session may have waiting to be sent, in bytes of URIs and envelopes.
MAX_QUEUED_BYTES = 256 * 1024
#: A notification's size besides its URI, for that bound.
ENVELOPE_BYTES = 64
#: How long one notification may wait for a session's transport to take it.
SEND_TIMEOUT_SECONDS = 10.0


class Bridge:
    """Bus events to handshake-era sessions (``SessionMiddleware(..., bus=...)``)."""

    def __init__(
        self,
        *,
        bus: Any,
        kind_of: Callable[[Any], tuple[EventKind, str | None]],
        table: Ownership,
        records: Any,
        counters: Counters,
        lease: Any,
    ) -> None:
        self.bus = bus
        self.kind_of = kind_of
        self.table = table
        self.records = records
        self.counters = counters
        self.lease = lease
        self.delivered = 0
        self.dropped = 0
        self._queues: dict[str, _Queue] = {}
        self._unsubscribe: Callable[[], None] | None = None

    def start(self) -> None:
        """Listens to the bus (on the running loop)."""
        if self._unsubscribe is None:
            self._unsubscribe = self.bus.subscribe(self.on_event)

    def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def stats(self) -> dict[str, int]:
        return {"delivered": self.delivered, "dropped": self.dropped}

    # -- subscriptions ------------------------------------------------------------------------

    async def record(self, session_id: str, uri: str, on: bool) -> None:
        """Records a ``resources/(un)subscribe`` of a session this node serves; raises
        :class:`Refused` with what the client should be told."""
        owned = self.table.owned.get(session_id)
        epoch = owned.epoch if owned is not None else None
        try:
            outcome = await self.records.subscribe(session_id, uri, on, epoch)
        except ConfigError as exc:
            raise Refused(INVALID_PARAMS, str(exc)) from None
        except McpDbError as exc:
            self.counters.redis_errors["subscriptions"] += 1
            logger.warning("cannot record a subscription of session %s: %s", session_id[:8], exc)
            raise Refused(INTERNAL_ERROR, "cannot record the subscription now; try again") from None
        if outcome == Subscribed.FULL:
            raise Refused(
                INVALID_PARAMS,
                "this session is subscribed to 64 KiB of resource URIs already; "
                "unsubscribe from some first",
            )
        if outcome in (Subscribed.MISSING, Subscribed.FENCED):
            raise Refused(INTERNAL_ERROR, "the session moved or ended; try again")
        if owned is not None:
            if on:
                owned.subscriptions.add(uri)
            else:
                owned.subscriptions.discard(uri)

    # -- delivery -----------------------------------------------------------------------------

    def on_event(self, event: Any) -> None:
        """A bus listener: queues the event's notification for every session it is for."""
        if not self.lease.valid(time.monotonic()):
            # Sessions may have moved while this node could not renew its lease: their new
            # owner delivers, and this node must not deliver a second time.
            return
        kind, uri = self.kind_of(event)
        message = notification(METHODS[kind], {"uri": uri} if uri is not None else None)
        size = ENVELOPE_BYTES + len(uri or "")
        table = self.table
        for session_id, owned in list(table.owned.items()):
            if (uri is None or uri in owned.subscriptions) and table.holds(session_id):
                self._queue(session_id).put(message, size)

    def _queue(self, session_id: str) -> _Queue:
        queue = self._queues.get(session_id)
        if queue is None:
            queue = self._queues[session_id] = _Queue(self)
            task = asyncio.get_running_loop().create_task(self._send(session_id, queue))
            queue.task = task
        return queue

    async def _send(self, session_id: str, queue: _Queue) -> None:
        """Sends a session's queued notifications in order, then ends (a new event starts a
        new sender)."""
        try:
            while queue.items:
                message, size = queue.items.popleft()
                queue.bytes -= size
                transport = self.table.transport(session_id)
                if transport is None or session_id not in self.table.owned:
                    self.dropped += 1 + len(queue.items)
                    return  # the session ended or moved: its new owner delivers
                try:
                    sent = await asyncio.wait_for(notify(transport, message), SEND_TIMEOUT_SECONDS)
                except asyncio.TimeoutError:
                    sent = False
                if sent:
                    self.delivered += 1
                else:
                    self.dropped += 1
        finally:
            self._queues.pop(session_id, None)


class _Queue:
    """One session's notifications waiting to be sent, bounded in bytes."""

    __slots__ = ("bridge", "bytes", "items", "task")

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.items: deque[tuple[Any, int]] = deque()
        self.bytes = 0
        self.task: asyncio.Task[None] | None = None

    def put(self, message: Any, size: int) -> None:
        self.items.append((message, size))
        self.bytes += size
        while self.bytes > MAX_QUEUED_BYTES and len(self.items) > 1:
            _, dropped = self.items.popleft()
            self.bytes -= dropped
            self.bridge.dropped += 1
