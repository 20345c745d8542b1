"""The middleware's counters (``SessionMiddleware.stats()``) and the attributes of the
request-duration histogram."""

from __future__ import annotations

from collections import Counter
from typing import Any

from mcp_db._asgi import PATH, Scope
from mcp_db._relay import RELAYED

_METHODS = frozenset({"GET", "POST", "DELETE"})
#: The histogram's attribute sets, built once each: (path, method) -> attributes.
_ATTRIBUTES: dict[tuple[str, str], dict[str, str]] = {}


def attributes(scope: Scope) -> dict[str, str]:
    """The request-duration histogram's attributes: the path a request took (``PATH`` in
    its scope, set where the path was decided) and its method."""
    path = scope.get(PATH) or ("relay_in" if RELAYED in scope else "local")
    method = scope["method"] if scope["method"] in _METHODS else "other"
    found = _ATTRIBUTES.get((path, method))
    if found is None:
        found = _ATTRIBUTES[path, method] = {"path": path, "method": method}
    return found


class Counters:
    """Counters for tests and operators. What the ``mcp_db.sessions.*``, ``mcp_db.relay.*``,
    ``mcp_db.locks.contended`` and ``mcp_db.redis.errors`` instruments report."""

    __slots__ = (
        "admissions",
        "handed_in",
        "handed_off",
        "lock_waits",
        "not_found",
        "redis_errors",
        "refused_full",
        "refused_initialize",
        "rehydrations",
        "relayed_in",
        "relayed_out",
        "takeovers",
    )

    def __init__(self) -> None:
        self.admissions = 0
        #: ``initialize`` requests refused for params the SDK would not accept.
        self.refused_initialize = 0
        self.rehydrations = 0
        self.takeovers = 0
        #: Sessions this node handed to the node relaying their requests, and got so.
        self.handed_off = 0
        self.handed_in = 0
        self.relayed_out = 0
        self.relayed_in = 0
        #: ``initialize`` answered 503 because Redis was out of memory.
        self.refused_full = 0
        #: 404 answers by reason; waits for a lock or claim by lock; Redis faults by operation.
        self.not_found: Counter[str] = Counter()
        self.lock_waits: Counter[str] = Counter()
        self.redis_errors: Counter[str] = Counter()

    def stats(self, relays: list[Any]) -> dict[str, int]:
        """See ``SessionMiddleware.stats``; ``relays``: the node's relays (one per
        endpoint), whose counters are summed."""
        counts = {
            "admitted": self.admissions,
            "refused_initialize": self.refused_initialize,
            "rehydrated": self.rehydrations,
            "taken_over": self.takeovers,
            "handed_off": self.handed_off,
            "handed_in": self.handed_in,
            "refused_full": self.refused_full,
        }
        for prefix, counter in (
            ("not_found.", self.not_found),
            ("lock_waits.", self.lock_waits),
            ("redis_errors.", self.redis_errors),
        ):
            # A copy first: an OpenTelemetry reader may call this from its own thread.
            for key, value in dict(counter).items():
                counts[prefix + key] = value
        for relay in relays:
            for key, value in relay.stats().items():
                counts["relay." + key] = counts.get("relay." + key, 0) + value
        return counts
