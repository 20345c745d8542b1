"""OpenTelemetry metrics of mcp-db, under the meter ``mcp_db``.

Nothing to call: configure an OpenTelemetry ``MeterProvider`` in the process (before or
after the stores and the middleware are made) and the instruments listed in
``docs/metrics.md`` report through it. Without one, the OpenTelemetry API's no-op meter
takes the few calls made; without ``opentelemetry-api`` installed (mcp 1.x does not need
it), there are no calls at all.

The counts cost the request path nothing: they are the counters the Rust core and the
middleware keep anyway (``RedisEventStore.stats()``, ``SessionMiddleware.stats()``), read
by observable instruments when a reader collects. Only the latency histograms record per
request. The registry holds stores and middlewares by weak reference; what an object had
counted when it was last read stays in the totals after it is garbage-collected, so the
counters never go backwards.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, Protocol

__all__ = ["METER_NAME", "Histogram", "record_replay", "register", "request_duration", "watch"]

#: The name of the meter every instrument of mcp-db belongs to.
METER_NAME = "mcp_db"

#: Bucket bounds of the request histogram, in seconds: a request served on its owner
#: takes about a millisecond, a relayed one a few, a tool call or an SSE stream far longer.
REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 300)
#: Bucket bounds of the replay histogram, in seconds.
REPLAY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class Histogram(Protocol):
    """What of an OpenTelemetry histogram mcp-db uses."""

    def record(self, amount: float, attributes: Mapping[str, str] | None = None) -> None: ...


class _NoHistogram:
    def record(self, amount: float, attributes: Mapping[str, str] | None = None) -> None:
        pass


Reading = Mapping[str, int]


class _Family:
    """The counters of one kind of object (Redis stores, memory stores, middlewares),
    summed over the objects alive and those collected since."""

    def __init__(self, read: Callable[[Any], Reading], levels: frozenset[str]) -> None:
        self._read = read
        #: Keys that are current levels (queue sizes), not totals: never carried over.
        self._levels = levels
        # Reentrant: a weakref callback may run during a collection on the same thread.
        self._lock = threading.RLock()
        self._members: dict[int, tuple[weakref.ref[Any], dict[str, int]]] = {}
        self._retired: dict[str, int] = {}

    def add(self, obj: Any) -> None:
        with self._lock:
            ref = weakref.ref(obj, self._retire)
            self._members[id(ref)] = (ref, {})

    def _retire(self, ref: weakref.ref[Any]) -> None:
        with self._lock:
            member = self._members.pop(id(ref), None)
            if member is None:
                return
            for key, value in member[1].items():
                if key not in self._levels:
                    self._retired[key] = self._retired.get(key, 0) + value

    def totals(self) -> dict[str, int]:
        """Every counter summed over the objects alive now, plus the collected ones."""
        with self._lock:
            totals = dict(self._retired)
            for ref, last in list(self._members.values()):
                obj = ref()
                if obj is None:
                    continue
                try:
                    reading = self._read(obj)
                except Exception:  # a closed store, say: report what it last counted
                    reading = last
                last.clear()
                last.update(reading)
                for key, value in reading.items():
                    totals[key] = totals.get(key, 0) + value
            return totals


def _read_store(store: Any) -> Reading:
    return store.stats()  # type: ignore[no-any-return]


def _read_middleware(middleware: Any) -> Reading:
    return middleware.stats()  # type: ignore[no-any-return]


_FAMILIES = {
    "redis": _Family(_read_store, frozenset({"buffered"})),
    "memory": _Family(_read_store, frozenset({"streams"})),
    "middleware": _Family(
        _read_middleware, frozenset({"relay.in_flight_forwarded", "relay.in_flight_served"})
    ),
    "subscriptions": _Family(_read_store, frozenset()),
}

_lock = threading.Lock()
_request_duration: Histogram | None = None
_replay_duration: Histogram | None = None
_enabled: bool | None = None


def _histogram(meter: Any, name: str, description: str, buckets: Iterable[float]) -> Histogram:
    try:
        made: Histogram = meter.create_histogram(
            name, unit="s", description=description, explicit_bucket_boundaries_advisory=buckets
        )
    except TypeError:  # opentelemetry-api < 1.23 takes no bucket advice
        made = meter.create_histogram(name, unit="s", description=description)
    return made


def _setup() -> bool:
    """Creates the instruments once, on the global meter; whether OpenTelemetry is there."""
    global _enabled, _request_duration, _replay_duration
    if _enabled is not None:
        return _enabled
    with _lock:
        if _enabled is None:
            try:
                from opentelemetry import metrics
            except ImportError:
                _request_duration = _replay_duration = _NoHistogram()
                _enabled = False
            else:
                meter = metrics.get_meter(METER_NAME)
                register(meter)
                _request_duration = _histogram(
                    meter,
                    "mcp_db.request.duration",
                    "Requests to the MCP endpoint, by the path they took through the middleware",
                    REQUEST_BUCKETS,
                )
                _replay_duration = _histogram(
                    meter,
                    "mcp_db.events.replay.duration",
                    "Reading the first page of a replay from the store",
                    REPLAY_BUCKETS,
                )
                _enabled = True
    return _enabled


def watch(obj: Any, family: Literal["redis", "memory", "middleware", "subscriptions"]) -> None:
    """Counts ``obj`` (a store of the ``redis`` or ``memory`` family, a
    ``SessionMiddleware`` or a ``RedisSubscriptionBus``) in the instruments, by weak
    reference. A no-op without OpenTelemetry."""
    if _setup():
        _FAMILIES[family].add(obj)


def request_duration() -> Histogram:
    """The histogram of requests to the MCP endpoint (``mcp_db.request.duration``)."""
    _setup()
    assert _request_duration is not None
    return _request_duration


def record_replay(seconds: float, attributes: Mapping[str, str]) -> None:
    """Records how long reading the first page of a replay took."""
    if _setup():
        assert _replay_duration is not None
        _replay_duration.record(seconds, attributes)


# -- the observable instruments ---------------------------------------------------------


def _observations(
    family: str, key: str, attributes: Mapping[str, str] | None = None, *, scale: float = 1
) -> Callable[[Any], Iterable[Any]]:
    """A callback reporting one counter of a family (times ``scale``: µs to seconds)."""
    from opentelemetry.metrics import Observation

    def observe(_options: Any) -> Iterable[Any]:
        value: float | None = _FAMILIES[family].totals().get(key)
        if value is None:
            return []
        return [Observation(value * scale if scale != 1 else value, attributes)]

    return observe


def _by_attribute(family: str, prefix: str, attribute: str) -> Callable[[Any], Iterable[Any]]:
    """A callback reporting the counters ``<prefix><value>`` of a family as one instrument
    with ``attribute=<value>``."""
    from opentelemetry.metrics import Observation

    def observe(_options: Any) -> Iterable[Any]:
        return [
            Observation(value, {attribute: key[len(prefix) :]})
            for key, value in sorted(_FAMILIES[family].totals().items())
            if key.startswith(prefix)
        ]

    return observe


def _redis_errors(_options: Any) -> Iterable[Any]:
    from opentelemetry.metrics import Observation

    counts: dict[str, int] = {}
    for key, value in _FAMILIES["middleware"].totals().items():
        if key.startswith("redis_errors."):
            counts[key[13:]] = counts.get(key[13:], 0) + value
    stores = _FAMILIES["redis"].totals()
    if stores:
        counts["event_write"] = stores.get("redis_errors", 0)
        counts["replay"] = stores.get("replay_errors", 0)
    buses = _FAMILIES["subscriptions"].totals()
    if buses:
        counts["subscriptions"] = buses.get("redis_errors", 0)
    return [Observation(value, {"operation": name}) for name, value in sorted(counts.items())]


def _store_counter(key: str, *stores: str) -> list[Callable[[Any], Iterable[Any]]]:
    return [_observations(store, key, {"store": store}) for store in stores]


def register(meter: Any) -> None:
    """Creates the observable instruments on ``meter`` (the global ``mcp_db`` meter; a
    test may pass its own)."""
    counter = meter.create_observable_counter
    level = meter.create_observable_up_down_counter
    both, redis, memory = ("redis", "memory"), ("redis",), ("memory",)
    # (instrument, name under mcp_db.events, stats key, stores, unit, description)
    for make, name, key, stores, unit, description in [
        (counter, "stored", "stored", both, "{event}",
         "Events the store wrote (Redis: that Redis confirmed)"),
        (counter, "replayed", "replayed", both, "{event}", "Events read back to resume a stream"),
        (counter, "dropped", "dropped", redis, "{event}",
         "Events delivered live but not stored, so not replayable"),
        (counter, "fenced", "fenced", redis, "{event}",
         "Dropped events written after another node took the session over"),
        (counter, "dropped_full", "dropped_full", redis, "{event}",
         "Dropped events that Redis refused because it was out of memory (maxmemory)"),
        (counter, "flushed", "flushed", redis, "{event}",
         "Events buffered while Redis was unreachable, written once it was back"),
        (counter, "write.batches", "write_batches", redis, "{batch}",
         "Pipelines of appends Redis answered (one round trip each, carrying the events of"
         " every session that had some waiting)"),
        (level, "buffered", "buffered", redis, "{event}",
         "Events held in memory now, waiting for Redis"),
        (level, "streams", "streams", memory, "{stream}", "Streams a memory store holds now"),
        (counter, "streams_evicted", "evicted_streams", memory, "{stream}",
         "Streams a memory store dropped to stay within max_streams"),
    ]:  # fmt: skip
        make(
            f"mcp_db.events.{name}",
            callbacks=_store_counter(key, *stores),
            unit=unit,
            description=description,
        )
    counter(
        "mcp_db.events.write.time",
        callbacks=[_observations("redis", "write_micros", {"store": "redis"}, scale=1e-6)],
        unit="s",
        description="Time those pipelines took: over write.batches, the mean write latency",
    )
    for key, description in [
        ("admitted", "New sessions this node created (answered initialize)"),
        ("refused_initialize", "initialize requests refused for invalid params: no session"),
        ("rehydrated", "Sessions this node rebuilt from their Redis record"),
        ("taken_over", "Sessions this node took over from an owner that was gone"),
        ("handed_off", "Sessions this node handed to the node relaying their requests"),
        ("handed_in", "Sessions another node handed to this one"),
        ("refused_full", "initialize answered 503 because Redis was out of memory"),
    ]:
        counter(
            f"mcp_db.sessions.{key}",
            callbacks=[_observations("middleware", key)],
            unit="{session}",
            description=description,
        )
    counter(
        "mcp_db.sessions.not_found",
        callbacks=[_by_attribute("middleware", "not_found.", "reason")],
        unit="{response}",
        description="404 answers to requests in a session, by reason",
    )
    for name, key, description in [
        ("forwarded", "forwarded", "Requests relayed to the session's owner and heard by it"),
        ("served", "served", "Requests other nodes relayed here that this node ran"),
        ("timeouts", "timeouts", "Relayed requests the owner did not take on in time"),
        ("lost", "lost", "Relayed requests whose response broke off"),
        ("dropped", "dropped_requests", "Requests relayed here dropped: the inbox was full"),
    ]:
        counter(
            f"mcp_db.relay.{name}",
            callbacks=[_observations("middleware", f"relay.{key}")],
            unit="{request}",
            description=description,
        )
    counter(
        "mcp_db.relay.rejected",
        callbacks=[_by_attribute("middleware", "relay.rejected_", "cause")],
        unit="{frame}",
        description="Relay frames dropped because they did not open (see docs/security.md)",
    )
    level(
        "mcp_db.relay.in_flight",
        callbacks=[
            _observations("middleware", "relay.in_flight_forwarded", {"direction": "forwarded"}),
            _observations("middleware", "relay.in_flight_served", {"direction": "served"}),
        ],
        unit="{request}",
        description="Relayed requests under way now",
    )
    for name, key, unit, description in [
        ("published", "published", "{event}", "Subscription events published through Redis"),
        ("delivered", "delivered", "{call}", "Subscription events handed to listeners here"),
        ("dropped", "dropped", "{event}",
         "Subscription events that reached this node only: Redis failed"),
        ("dropped_backlog", "dropped_backlog", "{event}",
         "Subscription events from other nodes dropped: this node's loop fell behind"),
    ]:  # fmt: skip
        counter(
            f"mcp_db.subscriptions.{name}",
            callbacks=[_observations("subscriptions", key)],
            unit=unit,
            description=description,
        )
    for name, description in [
        ("delivered", "Bus events sent to handshake-era sessions owned here"),
        ("dropped", "Bus events not sent to a handshake-era session: it moved, ended or lagged"),
    ]:
        counter(
            f"mcp_db.notifications.{name}",
            callbacks=[_observations("middleware", f"bridge.{name}")],
            unit="{notification}",
            description=description,
        )
    counter(
        "mcp_db.locks.contended",
        callbacks=[_by_attribute("middleware", "lock_waits.", "lock")],
        unit="{wait}",
        description="Requests that found a session lock or claim taken by another",
    )
    counter(
        "mcp_db.redis.errors",
        callbacks=[_redis_errors],
        unit="{error}",
        description="Redis operations that failed, by operation",
    )
