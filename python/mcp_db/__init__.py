"""mcp-db: run MCP servers built on the official Python SDK on many nodes.

Users import from here; ``mcp_db._core`` is the private Rust extension.
"""

from __future__ import annotations

from mcp_db._core import __version__
from mcp_db.errors import ConfigError, McpDbError, RedisUnavailableError, StoreTimeoutError
from mcp_db.event_store import (
    MemoryEventStore,
    RedisEventStore,
    SessionEventStore,
    UnattachedStoreWarning,
)
from mcp_db.middleware import SessionMiddleware

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
