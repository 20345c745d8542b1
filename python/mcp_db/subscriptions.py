"""``RedisSubscriptionBus``: the SDK's ``SubscriptionBus`` (mcp 2.x, the 2026-07-28
protocol's ``subscriptions/listen``) across every node of a deployment.

``MCPServer(..., subscriptions=RedisSubscriptionBus(url, prefix=...))``: a change
published on any node (``ctx.notify_tools_changed()``, ``notify_resource_updated``...)
reaches every listen stream on every node, each once. The Redis side is the core's
(``crates/core/src/subscriptions/``): one subscription per bus, whatever the number of
listen streams, and a compact encoding of the four events.

Given to ``SessionMiddleware(..., bus=...)`` too, the same events reach handshake-era
sessions (see ``middleware/bridge.py``). On mcp 1.x, which has no ``subscriptions/listen``,
that is all the bus does, and the server publishes with ``bus.notify_*``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import anyio.lowlevel

from mcp_db import _core, _fork, metrics
from mcp_db._core import EventKind
from mcp_db.errors import ConfigError, McpDbError
from mcp_db.event_store import RedisEventStore

try:  # mcp 2.x
    from mcp.shared.subscriptions import (
        PromptsListChanged,
        ResourcesListChanged,
        ResourceUpdated,
        ToolsListChanged,
    )
except ImportError:  # mcp 1.x: mcp-db's own, for handshake-era sessions
    from mcp_db._events import (  # type: ignore[assignment]
        PromptsListChanged,
        ResourcesListChanged,
        ResourceUpdated,
        ToolsListChanged,
    )

logger = logging.getLogger("mcp_db")

Listener = Callable[[Any], None]


def kind_of(event: Any) -> tuple[EventKind, str | None]:
    """An event's kind, and its URI (``ResourceUpdated`` only)."""
    if isinstance(event, ResourceUpdated):
        return EventKind.RESOURCE_UPDATED, event.uri
    if isinstance(event, ToolsListChanged):
        return EventKind.TOOLS_LIST_CHANGED, None
    if isinstance(event, PromptsListChanged):
        return EventKind.PROMPTS_LIST_CHANGED, None
    if isinstance(event, ResourcesListChanged):
        return EventKind.RESOURCES_LIST_CHANGED, None
    raise TypeError(f"not a subscription event: {event!r}")


class RedisSubscriptionBus:
    """A ``SubscriptionBus`` over Redis pub/sub, for ``MCPServer(subscriptions=...)``.

    ``redis`` is a Redis URL (``prefix`` then names the deployment's keys, as for
    :class:`RedisEventStore`) or the deployment's ``RedisEventStore``, whose connection
    and prefix it shares.

    As the SDK's in-process bus does, ``publish`` calls this process's listeners at once;
    the other processes' listeners get the event through Redis, and this process skips
    its own events when they come back. ``publish`` never raises: with Redis down, the
    event reaches this process's listeners only, and is counted in ``stats()`` as dropped
    and logged. Pub/sub keeps nothing, so once the subscription comes back after an outage
    every listener is told that the tool, prompt and resource lists changed: clients
    refetch what they may have missed (a refetch is always correct, only sometimes
    unneeded).
    """

    def __init__(
        self, redis: str | RedisEventStore, *, prefix: str = "mcp", timeout_seconds: float = 5.0
    ) -> None:
        #: The store whose deployment this bus shares, if any.
        self._store: RedisEventStore | None = None
        if isinstance(redis, RedisEventStore):
            self._store = redis
            deployment = redis.deployment
        elif isinstance(redis, str):
            deployment = _core.Deployment(redis, prefix=prefix, timeout_seconds=timeout_seconds)
        else:
            raise ConfigError(
                f"redis must be a Redis URL or a RedisEventStore, got {type(redis).__name__}"
            )
        self._deployment = deployment
        self._core = deployment.subscriptions()
        self._listeners: dict[object, Listener] = {}
        self._reader: asyncio.Task[None] | None = None
        self._delivered = 0
        self._dropped = 0
        metrics.watch(self, "subscriptions")
        _fork.register(self)

    def _after_fork(self) -> None:
        """In a forked child: a subscription of the child's own (with an origin of its own,
        so the parent hears what the child publishes), on the store's new deployment
        (the store, built first, has reopened it already) or on a new one. The parent's
        listeners are the parent's listen streams: the child starts with none."""
        _fork.leave_behind(self._deployment, self._core, self._reader, self._listeners)
        if self._store is not None:
            self._deployment = self._store.deployment
        else:
            self._deployment = self._deployment.reopen()
        self._core = self._deployment.subscriptions()
        self._listeners = {}
        self._reader = None
        self._delivered = self._dropped = 0

    async def publish(self, event: Any) -> None:
        """Delivers ``event`` to every listener, on every node."""
        self._deliver(event)
        try:
            await self._core.publish(*kind_of(event))
        except McpDbError as exc:
            self._dropped += 1
            logger.warning("subscription event %r reached this node only: %s", event, exc)
        except Exception:  # never into the handler that published
            self._dropped += 1
            logger.exception("cannot publish subscription event %r", event)
        await anyio.lowlevel.checkpoint()

    async def notify_tools_changed(self) -> None:
        """Publishes ``ToolsListChanged`` (as ``ctx.notify_tools_changed()`` does on 2.x)."""
        await self.publish(ToolsListChanged())

    async def notify_prompts_changed(self) -> None:
        await self.publish(PromptsListChanged())

    async def notify_resources_changed(self) -> None:
        await self.publish(ResourcesListChanged())

    async def notify_resource_updated(self, uri: str) -> None:
        await self.publish(ResourceUpdated(uri=str(uri)))

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Registers ``listener`` (called on this event loop); an idempotent unsubscribe.
        The first listener starts this process's subscription to Redis."""
        token = object()
        self._listeners[token] = listener
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(self._read())

        def unsubscribe() -> None:
            self._listeners.pop(token, None)

        return unsubscribe

    def stats(self) -> dict[str, int]:
        """published, publish_failed, received (from other processes), dropped_backlog
        (this loop fell too far behind), malformed, redis_errors; delivered (calls of
        listeners) and dropped (events that reached this node only)."""
        return {**self._core.stats(), "delivered": self._delivered, "dropped": self._dropped}

    def _deliver(self, event: Any) -> None:
        listeners = list(self._listeners.values())
        raised = 0
        for listener in listeners:
            try:
                listener(event)
            except Exception:  # one listener must not starve the others
                raised += 1
                logger.exception("subscription listener raised; continuing")
        # Counted once per event: a thousand listeners cost a thousand calls, not more.
        self._delivered += len(listeners) - raised

    async def _read(self) -> None:
        while True:
            try:
                deliveries = await self._core.next()
            except McpDbError as exc:
                logger.warning("subscription bus: %s", exc)
                await asyncio.sleep(0.1)
                continue
            if deliveries is None:
                return
            for delivery in deliveries:
                if delivery.kind == EventKind.RESUBSCRIBED:
                    for event in (ToolsListChanged(), PromptsListChanged(), ResourcesListChanged()):
                        self._deliver(event)
                elif delivery.kind == EventKind.RESOURCE_UPDATED:
                    self._deliver(ResourceUpdated(uri=delivery.uri or ""))
                elif delivery.kind == EventKind.TOOLS_LIST_CHANGED:
                    self._deliver(ToolsListChanged())
                elif delivery.kind == EventKind.PROMPTS_LIST_CHANGED:
                    self._deliver(PromptsListChanged())
                else:
                    self._deliver(ResourcesListChanged())
