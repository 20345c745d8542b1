"""mcp-db's Rust core. Private: import from ``mcp_db`` instead.

A :class:`Deployment` (one prefix on one Redis) builds everything else. Results cross as
frozen classes and enums, never as positional tuples or strings.
"""

import asyncio
from collections.abc import Awaitable
from typing import Any, Literal, final

__version__: str
#: Longest ``Last-Event-ID`` the stores will parse; longer ones replay nothing.
MAX_EVENT_ID_LEN: int

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

def _after_fork() -> None:
    """Forgets the parent's I/O threads in a forked child, which builds its own on first
    use; registered with ``os.register_at_fork``, never call it."""

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
class Run:
    """``count`` consecutive stored messages of one kind: ``json`` a JSON array of them
    exactly as the SDK serialized each, ``ends`` the offset in ``json`` where each one ends
    (native ``u32``s). ``tag`` is ``q`` (request), ``n`` (notification), ``r`` (response)
    or ``e`` (error). Priming events never appear in a run."""

    @property
    def tag(self) -> str: ...
    @property
    def count(self) -> int: ...
    @property
    def json(self) -> bytes: ...
    @property
    def ends(self) -> bytes: ...

@final
class Page:
    """One page of a replay: an event ID per message, and the messages in runs."""

    @property
    def ids(self) -> list[str]: ...
    @property
    def runs(self) -> list[Run]: ...

@final
class ReplayPages:
    """The rest of a replay, read ahead in the background."""

    def try_next(self) -> Page | Literal[False] | None:
        """The next page if ready, ``None`` at the end, ``False`` if not yet read."""
    async def next(self) -> Page | None:
        """Waits for the next page; ``None`` at the end."""

@final
class Replay:
    """The start of a replay: the ``stream`` it resumes, its first ``page``, and the
    ``rest`` (``None`` when the first page is all there is)."""

    @property
    def stream(self) -> str: ...
    @property
    def page(self) -> Page: ...
    @property
    def rest(self) -> ReplayPages | None: ...

@final
class Deployment:
    """One prefix on one Redis (or Redis Cluster), shared by every node of a deployment,
    and one connection to it. Everything else is built from here."""

    def __new__(cls, url: str, *, prefix: str, timeout_seconds: float = 5.0) -> Deployment:
        """Parses the URL and options (``mcp_db.ConfigError`` if bad); does not connect.
        ``timeout_seconds`` bounds every Redis operation."""
    def reopen(self) -> Deployment:
        """The same deployment with connections of its own, not opened yet, and no fences:
        for a process forked from the one that built this one, whose connections and tasks
        stayed with the parent (``mcp_db._fork``)."""
    @property
    def server(self) -> str:
        """``scheme://host:port/db`` without credentials."""
    @property
    def prefix(self) -> str: ...
    async def connect(self) -> None:
        """Opens the connection; ``mcp_db.RedisUnavailableError`` if Redis is unreachable."""
    def events(
        self,
        *,
        ttl_seconds: float,
        max_events_per_stream: int,
        buffer_max_events: int,
        page_size: int,
    ) -> RedisEvents:
        """The event store: batched durable appends, paged replay, a bounded fault buffer.
        Its writer starts now."""
    def sessions(self) -> SessionRecords:
        """Session records."""
    def fence(self, session: str, epoch: int | None) -> None:
        """Appends to ``session`` are written only while its record names ``epoch``
        (``None``: unconditionally)."""
    def ownership(self, node: str, lease_ms: int) -> Ownership:
        """Node ``node``'s lease on the sessions it owns (``ConfigError`` below 100 ms)."""
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
        """Node ``node``'s end of the relay (subscribes on a dedicated connection).

        The owner of a streamed response may have ``window`` body chunks and
        ``window_bytes`` bytes unacknowledged (at least one chunk, however large).
        ``secret`` (at least 16 bytes, the same on every node; ``ConfigError`` otherwise)
        seals every frame: encrypted, bound to its sender, channel and time, accepted once.
        A frame that does not open, or was sealed more than ``max_age_ms`` ago, is dropped,
        counted in ``stats()`` and logged."""
    def bus(self) -> Bus:
        """The bus; it subscribes (on a dedicated connection) once asked for news."""
    def subscriptions(self) -> SubscriptionBus:
        """The subscription bus: events for the server's subscribers, on every node. It
        subscribes (on a dedicated connection) once asked for a delivery."""

@final
class RedisEvents:
    """Redis backend of the event store (``Deployment.events``)."""

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
    async def replay(self, last_event_id: str, session: str | None) -> Replay | None:
        """What follows ``last_event_id``; ``None`` for an unknown, garbled, expired or
        (when ``session`` is given) foreign ID."""
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
    def replay(self, last_event_id: str, session: str | None) -> Replay | None:
        """Everything after ``last_event_id`` in one page (``rest`` is ``None``), or
        ``None`` (see ``RedisEvents``)."""
    def stats(self) -> dict[str, int]:
        """stored, replayed, streams, evicted_streams."""

@final
class SessionRecord:
    """The fields of a session record the middleware reads."""

    def __new__(
        cls,
        *,
        state: str,
        owner: str,
        epoch: int,
        version: int = 1,
        principal: str = "",
        node: str | None = None,
        init: str = "null",
        protocol: str | None = None,
        subscriptions: list[str] = ...,
    ) -> SessionRecord: ...
    @property
    def state(self) -> str:
        """``INITIALIZING``, ``INITIALIZED``, ``ACTIVE`` or ``CLOSED``."""
    @property
    def version(self) -> int:
        """Bumped by every transition."""
    @property
    def node(self) -> str:
        """The node that created the session."""
    @property
    def owner(self) -> str:
        """The node that holds the session's live state (its creator, on old records)."""
    @property
    def epoch(self) -> int:
        """The owner's epoch: each takeover adds one."""
    @property
    def principal(self) -> str: ...
    @property
    def init(self) -> str:
        """The client's ``initialize`` params, as JSON."""
    @property
    def protocol(self) -> str | None: ...
    @property
    def subscriptions(self) -> list[str]:
        """The resources the client subscribed to (``resources/subscribe``), sorted."""

@final
class Subscribed:
    """What recording a resource subscription came to (``SessionRecords.subscribe``)."""

    DONE: Subscribed
    """Recorded."""
    UNCHANGED: Subscribed
    """It was so already."""
    MISSING: Subscribed
    """No open session: never created, expired or closed."""
    FENCED: Subscribed
    """Another node owns the session at a later epoch."""
    FULL: Subscribed
    """The session's subscribed URIs would pass their byte bound (64 KiB)."""

@final
class Refusal:
    """Why a transition was refused."""

    MISSING: Refusal
    """No record: never created, or expired."""
    CONFLICT: Refusal
    """The record's version is not the expected one."""
    REFUSED: Refusal
    """The state machine does not allow the move."""
    FENCED: Refusal
    """Another node owns the session at a later epoch."""

@final
class Transition:
    """What a transition came to: ``done``, or the ``refusal`` and the record's
    ``version`` and ``state`` as they are (no ``state`` when ``MISSING``)."""

    @property
    def done(self) -> bool: ...
    @property
    def version(self) -> int: ...
    @property
    def refusal(self) -> Refusal | None: ...
    @property
    def state(self) -> str | None: ...

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
    ) -> Transition:
        """Moves the record to ``state``; refused as ``FENCED`` when ``epoch`` is given and
        another node owns the session now."""
    async def subscribe(
        self, session: str, uri: str, on: bool, epoch: int | None = None
    ) -> Subscribed:
        """Records that the session's client subscribed to resource ``uri`` (``on``) or
        unsubscribed, as the owner at ``epoch`` when given. ``ConfigError`` for a URI over
        8 KiB."""
    async def lookup(self, session: str, ttl_ms: int) -> SessionRecord | None:
        """The record, its idle TTL slid forward unless CLOSED; ``None`` if absent."""
    async def forget_unlearned(self, session: str, node: str) -> bool:
        """Deletes the record of a session whose creation ``node`` gave up on (the client
        got 503 and never learned the ID), if Redis wrote it after all and it is still
        ``node``'s first epoch, INITIALIZING or INITIALIZED; ``True`` if one was deleted."""

@final
class News:
    """One piece of news from the bus: a session ``closed``, or taken over by ``node`` at
    ``epoch`` (``node`` and ``epoch`` are set for a takeover only)."""

    @property
    def closed(self) -> bool: ...
    @property
    def session(self) -> str: ...
    @property
    def node(self) -> str | None: ...
    @property
    def epoch(self) -> int | None: ...

@final
class Bus:
    """Pub/sub on ``{prefix}:bus``: news every node must hear. Messages are built and
    parsed in the core only."""

    async def next(self) -> News | None:
        """The next news; waits for it. Subscribes on the first call."""
    async def closed(self, session: str) -> int:
        """Tells every node that ``session`` was closed; how many nodes heard it."""
    async def taken_over(self, session: str, node: str, epoch: int) -> int:
        """Tells every node that ``node`` took ``session`` over at ``epoch``."""

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
    ) -> Claim:
        """Takes ``session`` over from ``expected_owner`` at ``expected_epoch``."""
    async def hand_off(self, session: str, to: str, epoch: int, ttl_ms: int) -> Claim:
        """Hands ``session``, which this node owns at ``epoch``, to node ``to`` (epoch + 1).
        ``CLAIMED``: ``to`` owns it now; ``HELD``: it did already; otherwise the session was
        no longer this node's to give (``MOVED``, ``CLOSED``, ``MISSING``)."""
    async def touch(self, sessions: list[tuple[str, int]], ttl_ms: int) -> list[Touched]:
        """Slides the TTL of the ``(session, epoch)`` pairs this node owns and used."""

@final
class ClaimOutcome:
    """What a claim of a session came to."""

    CLAIMED: ClaimOutcome
    """This node took the session over (epoch + 1)."""
    HELD: ClaimOutcome
    """This node held it already (a concurrent request here claimed it first)."""
    MOVED: ClaimOutcome
    """Another node owns it now."""
    CLOSED: ClaimOutcome
    MISSING: ClaimOutcome
    """No record: never created, or expired."""

@final
class Claim:
    """A claim's ``outcome``, and the ``owner`` and ``epoch`` the record names now."""

    @property
    def outcome(self) -> ClaimOutcome: ...
    @property
    def owner(self) -> str: ...
    @property
    def epoch(self) -> int: ...
    @property
    def claimed(self) -> bool:
        """Whether this node owns the session now (``CLAIMED`` or ``HELD``)."""

@final
class Touched:
    """What a heartbeat's touch found of one owned session."""

    KEPT: Touched
    """Still this node's: its TTL slid forward."""
    EXPIRED: Touched
    CLOSED: Touched
    MOVED: Touched
    """Another node owns it now."""

@final
class Whole:
    """A whole response, in one part."""

    @property
    def status(self) -> int: ...
    @property
    def headers(self) -> list[tuple[bytes, bytes]]: ...
    @property
    def body(self) -> bytes: ...

@final
class Head:
    """The status and headers of a streamed response."""

    @property
    def status(self) -> int: ...
    @property
    def headers(self) -> list[tuple[bytes, bytes]]: ...

@final
class Chunk:
    """A piece of a streamed response's body."""

    @property
    def data(self) -> bytes: ...

@final
class End:
    """The end of a streamed response; ``ok`` is false if it broke off at the owner."""

    @property
    def ok(self) -> bool: ...

@final
class Cut:
    """The response broke off here (the owner was lost, or a frame was): ``reason``."""

    @property
    def reason(self) -> str: ...

@final
class Forward:
    """A forwarded request's response: a ``Whole`` alone, or a ``Head``, ``Chunk``s and an
    ``End``; a ``Cut`` at any point ends it early."""

    async def next(self) -> Whole | Head | Chunk | End | Cut:
        """The next part of the response, waiting for it."""
    def try_next(self) -> Whole | Head | Chunk | End | Cut | None:
        """The next part if it has arrived (or came with the acceptance), else ``None``."""
    def cancel(self) -> None:
        """The client went away: tells the owner."""

@final
class RelayOutcome:
    """What relaying a request came to. The *owner* serves the session; the *client* sent
    the request."""

    ACCEPTED: RelayOutcome
    """The owner took the request on; its response follows."""
    UNREACHABLE: RelayOutcome
    """Nobody listens on the owner's inbox, or the owner was found gone before it took the
    request on: the request never runs."""
    TIMEOUT: RelayOutcome
    """The owner did not take the request on in time; it never will."""
    OWNER_LOST: RelayOutcome
    """The owner was found gone after it took the request on: it may have run."""
    REFUSED: RelayOutcome
    """The owner refused it (it is shutting down)."""

@final
class Forwarded:
    """``Relay.forward``'s answer: the ``outcome``; the ``response`` when ``ACCEPTED``;
    the ``reason`` for ``OWNER_LOST`` and ``REFUSED``."""

    @property
    def outcome(self) -> RelayOutcome: ...
    @property
    def response(self) -> Forward | None: ...
    @property
    def reason(self) -> str | None: ...

@final
class RelayedRequest:
    """A request another node relayed here, claimed by this node: ``id`` names it in
    ``start``, ``send``, ``respond`` and ``end``; ``sender`` is the node that relayed it."""

    @property
    def id(self) -> bytes: ...
    @property
    def sender(self) -> str: ...
    @property
    def session(self) -> str: ...
    @property
    def head(self) -> str: ...
    @property
    def body(self) -> bytes: ...

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
    ) -> Forwarded:
        """Relays a request to ``owner``. Raises ``RedisUnavailableError`` when Redis
        failed and the owner may have heard the request: it must not be sent again."""
    async def next_requests(self, max: int = 64) -> list[RelayedRequest] | None:
        """The next requests relayed here (at most ``max``: all that have come, once one
        has); ``None`` once the relay is closed. Each is claimed by this node already: run
        it. A request is claimed only while this is awaited, so a node that asks for no
        work takes none on."""
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

@final
class EventKind:
    """What a subscription bus delivery is."""

    TOOLS_LIST_CHANGED: EventKind
    PROMPTS_LIST_CHANGED: EventKind
    RESOURCES_LIST_CHANGED: EventKind
    RESOURCE_UPDATED: EventKind
    RESUBSCRIBED: EventKind
    """The subscription came back after an outage: events published meanwhile are lost."""

@final
class Delivery:
    """One delivery: its ``kind``, and the ``uri`` of a ``RESOURCE_UPDATED``."""

    @property
    def kind(self) -> EventKind: ...
    @property
    def uri(self) -> str | None: ...

@final
class SubscriptionBus:
    """The subscription bus of one prefix (``Deployment.subscriptions()``): one Redis
    subscription, the publisher's own events skipped, a backlog bounded in bytes."""

    async def publish(self, kind: EventKind, uri: str | None = None) -> int:
        """Sends an event to every other process's bus; how many subscriptions Redis
        handed it to. ``uri`` goes with ``RESOURCE_UPDATED`` only (``ValueError``
        otherwise). Raises ``McpDbError`` if Redis failed (counted)."""
    async def next(self, limit: int = 256) -> list[Delivery] | None:
        """The next deliveries from other processes, at most ``limit``, in order: waits
        for the first, then takes those already waiting (a burst costs one hand-off to the
        event loop). ``None`` once the bus is gone for good. The first call subscribes."""
    def stats(self) -> dict[str, int]:
        """published, publish_failed, received, dropped_backlog (the reader fell too far
        behind), malformed, redis_errors."""
