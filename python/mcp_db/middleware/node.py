"""The life of a node: its lease (heartbeat and generation), joining and leaving the
cluster (lifespan, SIGTERM), the bus, and taking requests other nodes relay to it.

The heartbeat also says what every node must agree on and cannot check alone: the
fingerprint of its request-state key ring (``mcp-db doctor`` compares them)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Awaitable, Coroutine
from typing import Any

import anyio

from mcp_db._asgi import App
from mcp_db._core import Touched
from mcp_db._relay import serve
from mcp_db._sdk.listen import close_listen_streams
from mcp_db.errors import McpDbError
from mcp_db.middleware.counters import Counters
from mcp_db.middleware.ownership import Ownership

logger = logging.getLogger("mcp_db")


class Lease:
    """What this node knows of its own lease, on its monotonic clock."""

    __slots__ = ("back_at", "gen", "idle_limit", "node_id", "seconds", "until")

    def __init__(self, node_id: str, seconds: float, idle_limit: float) -> None:
        self.node_id = node_id
        self.seconds = seconds
        #: Past this idle time the owner asks Redis again (the record may have expired).
        self.idle_limit = idle_limit
        #: Bumped whenever this node's lease may have lapsed: ownership confirmed under an
        #: older generation must be confirmed again in Redis before it is trusted.
        self.gen = 0
        #: Until when the last heartbeat vouches for the lease (90% of it).
        self.until = 0.0
        #: When this node's heartbeat reached Redis again after failing (None while it
        #: fails). A node that never lost Redis counts from its start.
        self.back_at: float | None = float("-inf")

    def valid(self, now: float) -> bool:
        return now < self.until

    def recovering(self, now: float) -> bool:
        """Whether this node lost Redis less than a lease ago. Every heartbeat key may have
        expired during an outage while its node lived on, and a live node renews its key
        within a third of a lease once Redis is back: until a whole lease has passed, a
        missing heartbeat is no evidence of death."""
        back = self.back_at
        return back is None or now < back + self.seconds

    def failed(self) -> None:
        """A heartbeat could not reach Redis."""
        self.back_at = None

    def reached(self, started: float) -> None:
        """A heartbeat sent at ``started`` reached Redis."""
        if self.back_at is None:
            self.back_at = started

    def renewed(self, started: float, held: bool) -> None:
        """A heartbeat sent at ``started`` renewed the lease; ``held``: the key was still
        there."""
        if not held:
            self.gen += 1  # the lease lapsed (or is new): trust no ownership until confirmed
        self.until = started + self.seconds * 0.9


#: Why this node lets go of a session its heartbeat's touch did not keep.
_LET_GO = {Touched.EXPIRED: "expired", Touched.CLOSED: "closed"}


class Bus:
    """News for the other nodes: a session closed, or taken over (the core's ``Bus``
    builds and reads the messages)."""

    __slots__ = ("_bus", "_counters")

    def __init__(self, bus: Any, counters: Counters) -> None:
        self._bus = bus
        self._counters = counters

    async def closed(self, session_id: str) -> None:
        await self._announce("close", session_id, self._bus.closed(session_id))

    async def taken_over(self, session_id: str, node_id: str, epoch: int) -> None:
        await self._announce(
            "takeover", session_id, self._bus.taken_over(session_id, node_id, epoch)
        )

    async def _announce(self, what: str, session_id: str, published: Awaitable[int]) -> None:
        """Only news: without it the record and the epoch fence still rule, and a node
        that missed it finds out on its next heartbeat."""
        try:
            await published
        except McpDbError as exc:
            self._counters.redis_errors["relay"] += 1
            logger.warning("cannot announce the %s of session %s: %s", what, session_id[:8], exc)

    async def listen(self, table: Ownership) -> None:
        """Lets go of sessions closed, or taken over, by another node."""
        while True:
            news = await self._bus.next()
            if news is None:
                return
            session_id = news.session
            if news.closed:
                table.hints.pop(session_id, None)
                await table.let_go(session_id, "closed")  # a no-op for sessions not held here
            elif news.node is not None and news.node != table.node_id:
                await table.let_go(session_id, f"taken over by {news.node} at epoch {news.epoch}")
                if session_id in table.hints:
                    table.hints[session_id] = news.node


class Node:
    """Joins the cluster once the app has started, keeps the lease, and leaves."""

    def __init__(
        self,
        *,
        app: App,
        lease: Lease,
        table: Ownership,
        bus: Bus,
        relay: Any,
        ownership: Any,
        counters: Counters,
        lease_ms: int,
        ttl_ms: int,
        release_on_sigterm: bool,
        bridge: Any = None,
        server: Any = None,
        request_keys: dict[str, Any] | None = None,
    ) -> None:
        self.app = app
        self.lease = lease
        self.table = table
        self.bus = bus
        self.relay = relay
        self.own = ownership
        self.counters = counters
        self.lease_ms = lease_ms
        self.ttl_ms = ttl_ms
        self.release_on_sigterm = release_on_sigterm
        #: Bus events to handshake-era sessions (``bridge.py``), if the node has a bus.
        self.bridge = bridge
        #: The SDK's lowlevel server: its listen streams end gracefully on release.
        self.server = server
        #: The server's request-state key ring, as the heartbeat tells it (``None``: the
        #: server seals no request state, or the SDK line has none).
        self.request_keys = request_keys
        self.node_id = table.node_id
        self.released = False
        self.started = False
        self.lifespan_state: dict[str, Any] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        if self.started:
            return
        self.started = True
        self._warn_of_ephemeral_keys()
        self.spawn(self.bus.listen(self.table))
        self.spawn(self._take_relayed())
        if self.bridge is not None:
            self.bridge.start()
        if not await self.relay.ready(2000):
            logger.error("node %s cannot listen for relayed requests yet", self.node_id)
        await self._beat()
        self.spawn(self._heartbeat())
        if self.release_on_sigterm:
            self._hook_sigterm()

    def _warn_of_ephemeral_keys(self) -> None:
        """Says once, on start, what only shows much later as a bare -32602 on some other
        node: a key that is this process's alone cannot unseal another node's rounds."""
        if self.request_keys is not None and self.request_keys.get("ephemeral") is True:
            logger.warning(
                "node %s: request-state keys are ephemeral (a key per process): "
                "multi-round-trip requests (protocol 2026-07-28) whose rounds land on another "
                "node will fail with -32602 'Invalid or expired requestState'; pass "
                "request_state_security=RequestStateSecurity(keys=[...]) to MCPServer(...) or "
                "FastMCP(...), with the same keys on every node (docs/deploy/2026-clients.md)",
                self.node_id,
            )

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _hook_sigterm(self) -> None:
        """Releases this node's sessions the moment SIGTERM arrives, then lets the server's
        own handler (uvicorn's, which finishes requests in flight) do the rest."""
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGTERM)
        if not callable(previous):
            return  # nobody handles SIGTERM gracefully: the process just ends
        loop = asyncio.get_running_loop()

        def on_sigterm(signum: int, frame: Any) -> None:
            loop.call_soon_threadsafe(lambda: self.spawn(self.release()))
            previous(signum, frame)

        signal.signal(signal.SIGTERM, on_sigterm)

    async def release(self) -> None:
        """Hands every session of this node over at once: no new relayed requests, no
        heartbeat, so the next node that needs a session takes it without waiting."""
        if self.released:
            return
        self.released = True
        self.lease.until = 0.0
        self.relay.drain()
        if self.bridge is not None:
            self.bridge.stop()
        if close_listen_streams(self.server):
            logger.info(
                "node %s ended its listen streams: clients listen again elsewhere", self.node_id
            )
        try:
            await self.own.release()
            logger.info("node %s released its %d sessions", self.node_id, len(self.table.owned))
        except McpDbError as exc:
            self.counters.redis_errors["lease"] += 1
            logger.warning("node %s could not release its lease: %s", self.node_id, exc)

    async def _beat(self) -> None:
        started = time.monotonic()
        try:
            held = await self.own.beat(self._info())
        except McpDbError as exc:
            self.counters.redis_errors["lease"] += 1
            logger.warning("node %s cannot renew its lease: %s", self.node_id, exc)
            self.lease.failed()
            return
        self.lease.reached(started)
        if self.released:  # released while the beat was in flight
            await self.own.release()
            return
        self.lease.renewed(started, held)

    def _info(self) -> str:
        info: dict[str, Any] = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "beat": int(time.time() * 1000),
            "lease": self.lease_ms,  # with the key's PTTL, `mcp-db doctor` measures skew
        }
        if self.request_keys is not None:
            info["request_state"] = self.request_keys
        return json.dumps(info)

    async def _heartbeat(self) -> None:
        # Often enough to renew the lease, and to slide a session's TTL before it runs out.
        interval = min(self.lease_ms, self.ttl_ms) / 3000
        while not self.released:
            await anyio.sleep(interval)
            if self.released:
                return
            await self._beat()
            await self._touch()

    async def _touch(self) -> None:
        """Slides the idle TTL of sessions used since the last beat, and lets go of those
        that expired, were closed or moved to another node meanwhile."""
        table = self.table
        used = []
        for session_id, owned in list(table.owned.items()):
            if owned.used or owned.in_flight:
                used.append((session_id, owned.epoch))
                owned.used = False
            elif not table.holds(session_id):
                table.disown(session_id)  # reaped for idleness: rebuilt on demand
        if not used:
            return
        try:
            statuses = await self.own.touch(used, self.ttl_ms)
        except McpDbError as exc:
            self.counters.redis_errors["touch"] += 1
            logger.warning("cannot refresh %d sessions: %s", len(used), exc)
            return
        for (session_id, _), status in zip(used, statuses, strict=True):
            if status != Touched.KEPT:
                await table.let_go(session_id, _LET_GO.get(status, "moved"))

    async def _take_relayed(self) -> None:
        """Serves requests other nodes relay to this one, each in its own task: all that
        came while the loop was busy, at one wake-up."""
        while True:
            try:
                taken = await self.relay.next_requests()
            except McpDbError as exc:
                self.counters.redis_errors["relay"] += 1
                logger.warning("cannot take a relayed request: %s", exc)
                await anyio.sleep(0.1)
                continue
            if taken is None:
                return
            self.counters.relayed_in += len(taken)
            for request in taken:
                self.spawn(serve(self.app, self.relay, request, self.lifespan_state))
