"""mcp-db's Rust core. Private: import from ``mcp_db`` instead.

A replay page is ``(event_ids, runs)``. Each run is ``(tag, count, json, ends)``:
``count`` consecutive messages of one kind, ``json`` a JSON array of them exactly as the
SDK serialized each, ``ends`` the offset in ``json`` where each one ends (native ``u32``s);
``tag`` is ``q`` (request), ``n`` (notification), ``r`` (response) or ``e`` (error).
Priming events never appear in a page.
"""

import asyncio
from collections.abc import Awaitable
from typing import Any, Literal, final

__version__: str
#: Longest ``Last-Event-ID`` the stores will parse; longer ones replay nothing.
MAX_EVENT_ID_LEN: int

Run = tuple[str, int, bytes, bytes]
Page = tuple[list[str], list[Run]]

def parse_event_id(event_id: str) -> tuple[str, str] | None:
    """``(session, stream)`` of an event ID, or ``None`` if it is not one of ours."""

def key_layout(prefix: str) -> list[tuple[str, str]]:
    """The key layout of ``prefix``: ``(kind, SCAN pattern)`` for ``events``, ``session``,
    ``claim`` and ``node`` keys, then ``("bus", channel)``. ``ValueError`` for a bad prefix."""

def key_of(prefix: str, kind: str, name: str, stream: str | None = None) -> str:
    """The key of a session's record (``kind="session"``), of one of its event streams
    (``"events"`` with ``stream``) or of a node's heartbeat (``"node"``)."""

def parse_key(prefix: str, key: str) -> tuple[str, str, str | None] | None:
    """``(kind, session or node, stream or request id or None)`` for a key of ``prefix``'s
    layout, ``None`` for any other key."""

def event_id(session: str, stream: str, position: str) -> str | None:
    """The event ID (what a client sends as ``Last-Event-ID``) of the entry at ``position``
    (``<ms>-<seq>``) of a session's stream; ``None`` if ``position`` is not an entry ID."""

def redact(url: str) -> str:
    """``url`` with its password hidden: in the user part (``user:***@``) and in any query
    parameter whose name contains ``pass``. The core's errors show URLs this way too."""

def _quiesce() -> None:
    """Parks the core's I/O threads for good; registered with ``atexit``, never call it."""

def construct_models(
    cls: type[Any],
    items: list[Any],
    fields: frozenset[str],
    required: frozenset[str],
    extra_allowed: bool,
    root: type[Any] | None = None,
) -> list[Any]:
    """Instances of the pydantic model ``cls`` from parsed JSON objects, without
    validation (for messages the store wrote itself); ``root`` wraps each in that
    ``RootModel``. ``ValueError`` for a missing ``required`` field, or a key outside
    ``fields`` unless ``extra_allowed``."""

@final
class ReplayPages:
    """The rest of a replay, read ahead in the background."""

    def try_next(self) -> Page | Literal[False] | None:
        """The next page if ready, ``None`` at the end, ``False`` if not yet read."""
    async def next(self) -> Page | None:
        """Waits for the next page; ``None`` at the end."""

@final
class RedisEvents:
    """Redis backend: batched durable appends, paged replay, a bounded fault buffer."""

    def __new__(
        cls,
        url: str,
        *,
        prefix: str,
        ttl_seconds: float,
        max_events_per_stream: int,
        buffer_max_events: int,
        timeout_seconds: float,
        page_size: int,
    ) -> RedisEvents:
        """Parses the URL and options (``mcp_db.ConfigError`` if bad); does not connect."""
    @property
    def server(self) -> str:
        """``scheme://host:port/db`` without credentials."""
    async def connect(self) -> None:
        """Opens the connection; ``mcp_db.RedisUnavailableError`` if Redis is unreachable."""
    def append(
        self,
        wakeup: Wakeup,
        future: asyncio.Future[str],
        session: str,
        stream: str,
        tag: str,
        data: bytes | None,
    ) -> None:
        """Queues one event (``data`` None: priming). ``future`` (of the loop ``wakeup``
        serves, see ``mcp_db._wake``) gets its event ID once Redis has it, or at once while
        Redis is unreachable (the event is buffered)."""
    async def replay(
        self, last_event_id: str, session: str | None
    ) -> tuple[str, list[str], list[Run], ReplayPages | None] | None:
        """``(stream, ids, runs, pages)`` after ``last_event_id``: the first page, and the
        rest (``None`` if there is none). ``None`` for an unknown, garbled, expired or (when
        ``session`` is given) foreign ID."""
    def bus(self) -> Bus:
        """Subscribes (on a dedicated connection) to the bus of this store's prefix."""
    def sessions(self) -> SessionRecords:
        """Session records under this store's prefix, on this store's connection."""
    def ownership(self, node: str, lease_ms: int) -> Ownership:
        """This node's lease on the sessions it owns (``ConfigError`` below 100 ms)."""
    def relay(
        self,
        node: str,
        *,
        window: int = 64,
        window_bytes: int = 1048576,
        sweep_ms: int = 1000,
        secret: bytes | None = None,
        max_age_ms: int = 30000,
    ) -> Relay:
        """This node's end of the relay (subscribes on a dedicated connection).

        The owner of a streamed response may have ``window`` body chunks and
        ``window_bytes`` bytes unacknowledged (at least one chunk, however large).
        ``secret`` (at least 16 bytes, the same on every node; ``ConfigError`` otherwise)
        seals every frame: encrypted, bound to its sender, channel and time, accepted once.
        A frame that does not open, or was sealed more than ``max_age_ms`` ago, is dropped,
        counted in ``stats()`` and logged."""
    def fence(self, session: str, epoch: int | None) -> None:
        """Appends to ``session`` are written only while its record names ``epoch``
        (``None``: unconditionally)."""
    async def close(self) -> None:
        """Writes what is queued, tries once more to write the buffer, then stops."""
    def stats(self) -> dict[str, int]:
        """stored, buffered, flushed, dropped, redis_errors, replayed, fenced, dropped_full
        (the part of dropped that Redis refused at ``maxmemory``), write_batches,
        write_micros."""

@final
class MemoryEvents:
    """In-process backend with the Redis backend's semantics, bounded in memory."""

    def __new__(cls, *, max_events_per_stream: int, max_streams: int) -> MemoryEvents:
        """Keeps at most ``max_events_per_stream`` events per stream and ``max_streams``
        streams, dropping the least recently written stream first."""
    def append(self, session: str, stream: str, tag: str, data: bytes | None) -> str:
        """Stores one event and returns its ID."""
    def replay(
        self, last_event_id: str, session: str | None
    ) -> tuple[str, list[str], list[Run], None] | None:
        """Everything after ``last_event_id`` in one page, or ``None`` (see ``RedisEvents``)."""
    def stats(self) -> dict[str, int]:
        """stored, replayed, streams, evicted_streams."""

@final
class SessionRecords:
    """Session records (``{prefix}:s:{<session>}``), changed only by atomic scripts.

    States: INITIALIZING → INITIALIZED → ACTIVE (→ ACTIVE) → CLOSED; nothing leaves CLOSED.
    """

    async def create(self, session: str, node: str, principal: str, init: str, ttl_ms: int) -> bool:
        """Creates an INITIALIZING record; ``False`` if one exists."""
    async def transition(
        self,
        session: str,
        state: str,
        ttl_ms: int,
        expected_version: int | None = None,
        fields: list[tuple[str, str]] = ...,
        epoch: int | None = None,
    ) -> tuple[Literal[True], int] | tuple[Literal[False], str, int, str]:
        """``(True, version)``, or ``(False, reason, version, state)`` with reason
        ``missing``, ``conflict`` (version mismatch), ``refused`` (not allowed) or
        ``fenced`` (``epoch`` given and another node owns the session now)."""
    async def lookup(self, session: str, ttl_ms: int) -> dict[str, str] | None:
        """The record, its idle TTL slid forward unless CLOSED; ``None`` if absent."""
    async def forget_unlearned(self, session: str, node: str) -> bool:
        """Deletes the record of a session whose creation ``node`` gave up on (the client
        got 503 and never learned the ID), if Redis wrote it after all and it is still
        ``node``'s first epoch, INITIALIZING or INITIALIZED; ``True`` if one was deleted."""

@final
class Bus:
    """Pub/sub on ``{prefix}:bus``: news every node must hear (a session was closed)."""

    async def next(self) -> str | None:
        """The next message; waits for one."""
    async def publish(self, message: str) -> int:
        """Sends ``message`` to every subscribed node; how many received it."""

@final
class Ownership:
    """A node's lease on all its sessions (its heartbeat key), and takeovers."""

    @property
    def node(self) -> str:
        """This node's ID."""
    @property
    def lease_ms(self) -> int:
        """How long a heartbeat keeps this node's sessions its own."""
    async def beat(self, info: str) -> bool:
        """Renews the lease; ``False`` if it had lapsed (or is new)."""
    async def release(self) -> None:
        """Deletes the heartbeat: other nodes may take this node's sessions at once."""
    async def alive(self, node: str) -> bool:
        """Whether ``node``'s heartbeat lives."""
    async def claim(
        self, session: str, expected_owner: str, expected_epoch: int, ttl_ms: int
    ) -> tuple[bool, str, int, str]:
        """``(claimed, owner, epoch, why)``; why is ``claimed``, ``held``, ``moved``,
        ``closed`` or ``missing``."""
    async def touch(self, sessions: list[tuple[str, int]], ttl_ms: int) -> list[int]:
        """Slides the TTL of owned sessions: 1 done, 0 expired, -1 closed, -2 moved."""

Frame = tuple[Any, ...]

@final
class Forward:
    """A forwarded request's response: ``("whole", status, headers, body)`` alone, or
    ``("start", status, headers)``, then ``("data", bytes)`` and ``("end", ok)``; or
    ``("lost", reason)`` at any point."""

    async def next(self) -> Frame:
        """The next part of the response, waiting for it."""
    def try_next(self) -> Frame | None:
        """The next part if it has arrived (or came with the acceptance), else ``None``."""
    def cancel(self) -> None:
        """The client went away: tells the owner."""

@final
class Relay:
    """This node's end of the relay between nodes (Redis pub/sub)."""

    @property
    def node(self) -> str:
        """This node's ID."""
    async def ready(self, timeout_ms: int) -> bool:
        """Whether this node listens on its channels (waits up to ``timeout_ms``)."""
    def drain(self) -> None:
        """Takes no new requests; those in flight go on."""
    def close(self) -> None:
        """Leaves both channels; requests in flight end."""
    def stats(self) -> dict[str, int]:
        """forwarded, served, timeouts, lost, dropped_requests, in_flight_forwarded,
        in_flight_served; buffered_bytes (body bytes received for forwarded requests and
        not yet taken by :meth:`Forward.next`); rejected (frames dropped because they did
        not open) and its causes: rejected_unsealed (not sealed, while this node has a
        secret), rejected_sealed (sealed, while it has none), rejected_forged (wrong key,
        altered, or naming another sender), rejected_stale, rejected_replayed."""
    async def forward(
        self, owner: str, session: str, head: str, body: bytes, accept_timeout_ms: int
    ) -> tuple[str, Forward | str | None]:
        """``("accepted", Forward)``; ``("unreachable", None)`` or ``("timeout", None)``,
        and the request never runs; ``("lost", reason)``: the owner took it on and was then
        found gone, so it may have run; or ``("refused", reason)``. Raises
        ``RedisUnavailableError`` when Redis failed and the owner may have heard the
        request: it must not be sent again."""
    async def next_request(self) -> tuple[bytes, str, str, str, bytes] | None:
        """The next request relayed here: ``(id, from_node, session, head, body)``. Its
        claim is under way: run nothing of it before :meth:`claimed` says so."""
    def claimed(self, id: bytes) -> bool | Awaitable[bool]:
        """Whether this node won the request's claim, or an awaitable of it while the
        claim is in flight. ``False``: the relaying node gave up; drop the request."""
    def start(self, id: bytes, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """Sends the status and headers of a streamed response."""
    def respond(
        self, id: bytes, status: int, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        """Sends a whole response in one frame and forgets the request."""
    def send(self, id: bytes, chunk: bytes) -> Awaitable[bool] | None:
        """``None`` if the window has room, else an awaitable: ``False`` if the relaying
        side went away."""
    def end(self, id: bytes, ok: bool) -> None:
        """Ends the response (``ok=False``: it broke off) and forgets the request."""
    async def disconnected(self, id: bytes) -> None:
        """Resolves when the relaying side went away."""

@final
class Wakeup:
    """One event loop's end of the core's completions: the I/O thread queues results and
    writes a byte to a socket the loop watches (``mcp_db._wake``)."""

    def __init__(self) -> None: ...
    def fileno(self) -> int:
        """The socket the loop watches for readability."""
    def drain(self) -> None:
        """Completes every future whose result has come (the loop's reader callback)."""
