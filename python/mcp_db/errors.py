"""Exceptions raised by mcp-db. All derive from :class:`McpDbError`; each also derives
from the builtin it refines, so ``except ConnectionError`` works as expected."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "McpDbError",
    "RedisOutOfMemoryError",
    "RedisUnavailableError",
    "StoreTimeoutError",
]


class McpDbError(Exception):
    """Base class of every mcp-db error."""


class ConfigError(McpDbError, ValueError):
    """A bad URL or option. Nothing was changed; fix the argument named in the message."""


class RedisUnavailableError(McpDbError, ConnectionError):
    """Redis could not be reached at the URL named in the message."""


class RedisOutOfMemoryError(McpDbError):
    """Redis refused a write with ``OOM``: it is at ``maxmemory`` and may evict nothing
    (``noeviction``). It lasts until Redis has room again: give it more memory, or let
    events expire sooner (``ttl_seconds``, ``max_events_per_stream``). See docs/redis.md."""


class StoreTimeoutError(McpDbError, TimeoutError):
    """Redis did not answer within the store's ``timeout_seconds``."""
