"""mcp-db: run MCP servers built on the official Python SDK on many nodes.

Users import from here; ``mcp_db._core`` is the private Rust extension.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mcp_db._core import __version__
from mcp_db.errors import ConfigError, McpDbError, RedisUnavailableError, StoreTimeoutError
from mcp_db.event_store import (
    MemoryEventStore,
    RedisEventStore,
    SessionEventStore,
    UnattachedStoreWarning,
)

if TYPE_CHECKING:
    from mcp_db.middleware import SessionMiddleware


def __getattr__(name: str) -> Any:
    # Imported on first use: on mcp 1.x the middleware installs the session class that
    # rebuilt sessions need, which a server using only the event store should not get.
    if name == "SessionMiddleware":
        from mcp_db.middleware import SessionMiddleware

        return SessionMiddleware
    raise AttributeError(f"module 'mcp_db' has no attribute {name!r}")


__all__ = [
    "ConfigError",
    "McpDbError",
    "MemoryEventStore",
    "RedisEventStore",
    "RedisUnavailableError",
    "SessionEventStore",
    "SessionMiddleware",
    "StoreTimeoutError",
    "UnattachedStoreWarning",
    "__version__",
]
