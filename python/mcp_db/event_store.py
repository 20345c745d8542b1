"""Session-scoped event stores for the MCP SDK's streamable HTTP transport.

The SDK gives one ``event_store`` to every session and names streams by JSON-RPC request
id, which repeats across sessions. A store used as is would replay one session's messages
to another. :meth:`EventStore.attach` fixes that: every transport the session manager
creates gets a view of the store bound to its session ID, and event IDs carry the session,
so a ``Last-Event-ID`` from another session replays nothing.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import warnings
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from mcp_db import _core, _fork, _wake, metrics
from mcp_db._core import Replay
from mcp_db._sdk import (
    EventCallback,
    EventId,
    EventMessage,
    StreamId,
    decode,
    decode_run,
    encode,
)
from mcp_db._sdk import EventStore as _SdkEventStore
from mcp_db._sdk.manager import (
    bind_transports,
    find_session_managers,
    on_startup,
    stream_is_live,
)
from mcp_db.errors import ConfigError, McpDbError

if TYPE_CHECKING:
    from types import TracebackType

    from typing_extensions import Self

__all__ = ["MemoryEventStore", "RedisEventStore", "SessionEventStore", "UnattachedStoreWarning"]

logger = logging.getLogger("mcp_db")

#: How long a message waits for the transport to re-register a stream being resumed.
_RESUME_WAIT_SECONDS = 2.0

#: Session component of events stored through an unattached store.
UNATTACHED = ""
#: The tags (``encode``) of a call's answer: a JSON-RPC response, or an error.
_ANSWERS = frozenset("re")


def _decode_run(tag: str, data: bytes, ends: bytes, first_id: str) -> list[Any]:
    """The messages of a run; ``None`` in place of any this store cannot read."""
    try:
        return decode_run(tag, data)
    except (KeyError, ValueError):  # pydantic's ValidationError is a ValueError
        # Not written by this store. Skip what cannot be read, keep the rest of the replay.
        messages: list[Any] = []
        start = 1
        for end in memoryview(ends).cast("I"):
            try:
                messages.append(decode(tag, data[start:end]))
            except (KeyError, ValueError) as exc:
                logger.error("skipping an unreadable stored event near %s: %s", first_id[:80], exc)
                messages.append(None)
            start = end + 1
        return messages


class UnattachedStoreWarning(UserWarning):
    """The store was used without :meth:`attach`: fine for one session, unsafe for more."""


def _number(name: str, value: Any, *, integer: bool = False, minimum: float = 0) -> Any:
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{name} must be {kind}, got {value!r}")
    if not math.isfinite(value) or value < minimum or (minimum == 0 and value <= 0):
        raise ConfigError(
            f"{name} must be {'at least ' + str(minimum) if minimum else 'positive'}, got {value!r}"
        )
    return value


class _Base(_SdkEventStore):
    """What both stores share: the SDK interface, session views and ``attach``."""

    _warned_unattached = False
    #: The store the session manager was given, when it is not this one (``_scoped``).
    _attached_as: _Base | None = None
    #: Attributes of this store's measurements.
    _metric_attributes: ClassVar[dict[str, str]] = {}
    #: Replays that failed because Redis could not be read.
    _replay_errors = 0
    #: Told ``(session, stream)`` once an answer (a JSON-RPC response or error) has been
    #: stored, or could not be (``_on_answer``).
    _answer_hooks: tuple[Callable[[str, str], None], ...] = ()

    async def _append(self, session: str, stream: str, tag: str, data: bytes | None) -> str:
        raise NotImplementedError

    async def _replay(self, session: str, last_event_id: str) -> Replay | None:
        """The first page after ``last_event_id``, or ``None`` if it is not a known ID of
        ``session``."""
        raise NotImplementedError

    # -- the SDK's interface, used directly only by an unattached store ------------------

    async def store_event(self, stream_id: StreamId, message: Any) -> EventId:
        self._warn_unattached()
        return await self._store(UNATTACHED, stream_id, message)

    async def replay_events_after(
        self, last_event_id: EventId, send_callback: EventCallback
    ) -> StreamId | None:
        self._warn_unattached()
        return await self._replay_to(UNATTACHED, last_event_id, send_callback)

    # -- shared by the store and its session views ----------------------------------------

    async def _store(self, session: str, stream_id: StreamId, message: Any) -> EventId:
        stream = stream_id if type(stream_id) is str else str(stream_id)
        tag = None
        try:
            if message is None:  # a priming event: a resume point, never replayed
                return await self._append(session, stream, "p", None)
            tag, data = encode(message)
            return await self._append(session, stream, tag, data)
        except Exception:
            # Raising would stop the SDK's message router for the whole session. Without an
            # ID the SDK still delivers the message live; it just cannot be resumed from.
            logger.exception("could not store an event of session %s", session[:8])
            return None  # type: ignore[return-value]
        finally:
            # The call is over once the SDK has its answer, stored or not.
            if tag in _ANSWERS and self._answer_hooks:
                for hook in self._answer_hooks:
                    hook(session, stream)

    async def _replay_to(
        self, session: str, last_event_id: EventId, send_callback: EventCallback
    ) -> StreamId | None:
        if (
            not isinstance(last_event_id, str)
            or not 0 < len(last_event_id) <= _core.MAX_EVENT_ID_LEN
        ):
            return None
        started = time.perf_counter()
        try:
            found = await self._replay(session, last_event_id)
        except McpDbError:
            self._replay_errors += 1
            raise
        metrics.record_replay(time.perf_counter() - started, self._metric_attributes)
        if found is None:
            return None
        page, rest = found.page, found.rest
        while True:
            ids, i = page.ids, 0
            for run in page.runs:
                for message in _decode_run(run.tag, run.json, run.ends, ids[i]):
                    if message is not None:
                        await send_callback(EventMessage(message, ids[i]))
                    i += 1
            if rest is None:
                return found.stream
            # The next page was read ahead while this one was sent: usually it is there.
            following = rest.try_next()
            if following is False:
                following = await rest.next()
            if following is None:
                return found.stream
            page = following

    def _warn_unattached(self) -> None:
        if not self._warned_unattached:
            self._warned_unattached = True
            warning = UnattachedStoreWarning(
                f"{type(self).__name__} is used without attach(): events are not scoped to "
                "a session, which is only safe while the server has one session. Call "
                "store.attach(session_manager) (SessionMiddleware does it for you)."
            )
            try:
                warnings.warn(warning, stacklevel=3)
            except Warning:  # warnings made errors (-W error): logged, never into the SDK
                logger.warning("%s", warning)

    # -- binding to sessions --------------------------------------------------------------

    def for_session(self, session_id: str) -> SessionEventStore:
        """A view of this store whose events all belong to ``session_id``."""
        if not isinstance(session_id, str) or not session_id:
            raise ConfigError(f"session_id must be a non-empty string, got {session_id!r}")
        return SessionEventStore(self, session_id)

    def _on_answer(self, hook: Callable[[str, str], None]) -> None:
        """Calls ``hook(session, stream)`` each time the SDK hands the store an answer to
        a call (a JSON-RPC response or error), once Redis has it or the write failed: either
        way the call is over (``SessionMiddleware`` uses it)."""
        self._answer_hooks = (*self._answer_hooks, hook)

    def attach(self, target: Any) -> None:
        """Bind every transport a session manager creates to its own session.

        ``target`` is the SDK's ``StreamableHTTPSessionManager``, or the app that holds it:
        the SDK's ``streamable_http_app()`` or FastMCP's ``http_app()``, whose manager is
        created when the app starts (it is bound then, each time). If the manager was
        built without an event store, this store becomes its event store. Idempotent.
        ``SessionMiddleware`` does this itself.
        """
        if getattr(target, "stateless", False):
            return  # stateless managers keep no sessions and no events
        if hasattr(target, "_server_instances"):  # a session manager
            bind_transports(target, self._attached_as or self, self._view)
            return
        managers = find_session_managers(target)
        if managers:
            for _, manager in managers:
                self.attach(manager)
        elif not on_startup(target, lambda: self._attach_started(target)):
            raise ConfigError(
                f"cannot attach to {target!r}: pass the SDK's StreamableHTTPSessionManager, "
                "or the app of streamable_http_app() or http_app() (FastMCP)"
            )

    def _attach_started(self, app: Any) -> None:
        managers = find_session_managers(app)
        if not managers:
            raise ConfigError(f"no StreamableHTTPSessionManager in {app!r} once it started")
        for _, manager in managers:
            self.attach(manager)

    def _view(self, session_id: str, transport: Any) -> SessionEventStore:
        return SessionEventStore(self, session_id, transport)


class SessionEventStore(_SdkEventStore):
    """A store's view bound to one session; what each transport gets after ``attach``.

    It also closes a gap in the SDK's resume path. After ``replay_events_after`` returns,
    the transport re-registers the stream for live delivery a moment later; a message the
    server emits in between is stored but neither replayed nor sent. So while a stream of
    this session is being resumed, ``store_event`` for that stream waits until the
    transport has re-registered it (bounded by ``_RESUME_WAIT_SECONDS``), and the message
    then goes out live.
    """

    def __init__(self, store: _Base, session_id: str, transport: Any = None) -> None:
        self._store = store
        self.session_id = session_id
        self._transport = weakref.ref(transport) if transport is not None else None
        #: stream id -> monotonic deadline, for streams being resumed right now
        self._resuming: dict[str, float] = {}

    async def store_event(self, stream_id: StreamId, message: Any) -> EventId:
        if self._resuming and message is not None and stream_id in self._resuming:
            await self._until_live(stream_id)
        return await self._store._store(self.session_id, stream_id, message)

    async def replay_events_after(
        self, last_event_id: EventId, send_callback: EventCallback
    ) -> StreamId | None:
        parsed = _core.parse_event_id(last_event_id) if isinstance(last_event_id, str) else None
        stream = parsed[1] if parsed is not None and parsed[0] == self.session_id else None
        if stream is not None and self._transport is not None:
            self._resuming[stream] = time.monotonic() + _RESUME_WAIT_SECONDS
        result = None
        try:
            result = await self._store._replay_to(self.session_id, last_event_id, send_callback)
            return result
        finally:
            if stream is not None:
                if result is None:
                    self._resuming.pop(stream, None)
                else:  # the transport registers the stream right after this returns
                    self._resuming[stream] = time.monotonic() + _RESUME_WAIT_SECONDS

    async def _until_live(self, stream_id: str) -> None:
        transport = self._transport() if self._transport is not None else None
        deadline = self._resuming[stream_id]
        while transport is not None and time.monotonic() < deadline:
            if stream_is_live(transport, stream_id):
                break
            await asyncio.sleep(0.001)
        self._resuming.pop(stream_id, None)

    def __repr__(self) -> str:
        return f"<SessionEventStore {self.session_id[:8]}… of {self._store!r}>"


class RedisEventStore(_Base):
    """Events in Redis streams, one per (session, stream), shared by every node.

    Args:
        url: ``redis://[user:pass@]host:port/db``, ``rediss://…`` for TLS, or ``unix://…``.
        prefix: first part of every key, to share one Redis between deployments.
        ttl_seconds: sliding expiry of a stream, renewed on every append.
        max_events_per_stream: approximate cap per stream (``XADD MAXLEN ~``).
        buffer_max_events: events kept in memory while Redis is unreachable, written
            when it is back; beyond that they are delivered live but counted as dropped.
        timeout_seconds: how long one Redis round trip may take before it counts as a fault.
        replay_page_size: entries read per round trip on replay.

    ``store_event`` returns once Redis has the event. It never raises into the SDK: while
    Redis is unreachable it buffers (see ``buffer_max_events``) and logs. Replay raises
    :class:`~mcp_db.errors.RedisUnavailableError` (a ``ConnectionError``) if Redis cannot
    be reached, so a client retries instead of silently missing events.
    """

    _metric_attributes: ClassVar[dict[str, str]] = {"store": "redis"}

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "mcp",
        ttl_seconds: float = 3600,
        max_events_per_stream: int = 10_000,
        buffer_max_events: int = 10_000,
        timeout_seconds: float = 5.0,
        replay_page_size: int = 500,
    ) -> None:
        if not isinstance(url, str):
            raise ConfigError(
                f"url must be a string such as 'redis://127.0.0.1:6379/0', got {url!r}"
            )
        if not isinstance(prefix, str):
            raise ConfigError(f"prefix must be a string, got {prefix!r}")
        #: The Redis prefix this store writes under, and everything else a node needs from it
        #: (session records, ownership, the relay, the bus): ``SessionMiddleware`` uses it.
        #: In a process forked from the one that built the store, a deployment of that
        #: process's own (``_fork``).
        self.deployment = _core.Deployment(
            url, prefix=prefix, timeout_seconds=_number("timeout_seconds", timeout_seconds)
        )
        self._options = {
            "ttl_seconds": _number("ttl_seconds", ttl_seconds),
            "max_events_per_stream": _number(
                "max_events_per_stream", max_events_per_stream, integer=True
            ),
            "buffer_max_events": _number(
                "buffer_max_events", buffer_max_events, integer=True, minimum=0
            ),
            "page_size": _number("replay_page_size", replay_page_size, integer=True),
        }
        self._core = self.deployment.events(**self._options)
        self.prefix = prefix
        #: The bound on one Redis operation, which the middleware also holds its own to.
        self.timeout_seconds = float(timeout_seconds)
        self._settings: dict[str, Any] = {
            "url": url,
            "ttl_seconds": ttl_seconds,
            "max_events_per_stream": max_events_per_stream,
            "buffer_max_events": buffer_max_events,
            "timeout_seconds": timeout_seconds,
            "replay_page_size": replay_page_size,
        }
        metrics.watch(self, "redis")
        _fork.register(self)

    def _after_fork(self) -> None:
        """In a forked child: new connections and a new writer; what the parent's writer
        had not written yet is the parent's to write."""
        _fork.leave_behind(self.deployment, self._core)
        self.deployment = self.deployment.reopen()
        self._core = self.deployment.events(**self._options)
        self._replay_errors = 0

    def _scoped(self, name: str, *, attached_as: _Base) -> RedisEventStore:
        """A store like this one under ``<prefix>:<name>``, for one of several servers in
        one app. Its ``attach`` takes the transports whose store is ``attached_as`` (the
        store every server of the app was given)."""
        scoped = RedisEventStore(prefix=f"{self.prefix}:{name}", **self._settings)
        scoped._attached_as = attached_as
        return scoped

    @property
    def server(self) -> str:
        """The Redis server, without credentials."""
        return self.deployment.server

    def __repr__(self) -> str:
        return f"<RedisEventStore {self.deployment.server} prefix={self.prefix!r}>"

    async def _append(self, session: str, stream: str, tag: str, data: bytes | None) -> str:
        wakeup, future = _wake.start()
        self._core.append(wakeup, future, session, stream, tag, data)
        return await future  # type: ignore[no-any-return]

    async def _replay(self, session: str, last_event_id: str) -> Replay | None:
        return await self._core.replay(last_event_id, session)

    async def connect(self) -> None:
        """Opens the connection now. Raises ``ConnectionError`` naming the server if it cannot."""
        await self.deployment.connect()

    async def close(self) -> None:
        """Writes what is queued (and, if Redis is back, what is buffered), then stops."""
        await self._core.close()

    def stats(self) -> dict[str, int]:
        """Counters: stored, buffered, flushed, dropped, fenced, dropped_full (the part of
        dropped that Redis refused at ``maxmemory``), redis_errors (failed writes),
        replayed, replay_errors (replays that could not read Redis), write_batches
        and write_micros (pipelines of appends Redis answered, and their total time)."""
        return {**self._core.stats(), "replay_errors": self._replay_errors}

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class MemoryEventStore(_Base):
    """Events in this process's memory, with the same semantics as :class:`RedisEventStore`.

    For a single-process server or tests. Memory is bounded: at most
    ``max_events_per_stream`` events per stream and ``max_streams`` streams, the least
    recently written stream being dropped first.
    """

    _metric_attributes: ClassVar[dict[str, str]] = {"store": "memory"}

    def __init__(self, *, max_events_per_stream: int = 10_000, max_streams: int = 10_000) -> None:
        self._core = _core.MemoryEvents(
            max_events_per_stream=_number(
                "max_events_per_stream", max_events_per_stream, integer=True
            ),
            max_streams=_number("max_streams", max_streams, integer=True),
        )
        metrics.watch(self, "memory")

    def __repr__(self) -> str:
        return "<MemoryEventStore>"

    async def _append(self, session: str, stream: str, tag: str, data: bytes | None) -> str:
        return self._core.append(session, stream, tag, data)

    async def _replay(self, session: str, last_event_id: str) -> Replay | None:
        return self._core.replay(last_event_id, session)

    async def close(self) -> None:
        """Nothing to release; here so both stores can be used the same way."""

    def stats(self) -> dict[str, int]:
        """Counters: stored, replayed, streams, evicted_streams."""
        return self._core.stats()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
