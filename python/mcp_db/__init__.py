"""mcp-db: run MCP servers built on the official Python SDK on many nodes.

Users import from here; ``mcp_db._core`` is the private Rust extension.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mcp_db._core import __version__
from mcp_db.errors import (
    ConfigError,
    McpDbError,
    RedisOutOfMemoryError,
    RedisUnavailableError,
    StoreTimeoutError,
)

if TYPE_CHECKING:
    from mcp_db.event_store import (
        MemoryEventStore,
        RedisEventStore,
        SessionEventStore,
        UnattachedStoreWarning,
    )
    from mcp_db.middleware import SessionMiddleware
    from mcp_db.subscriptions import RedisSubscriptionBus

#: Imported on first use: the stores and the middleware import the SDK, which the `mcp-db`
#: command does not need (importing `mcp` is most of its start-up time). Nothing here
#: changes what the SDK does: on mcp 1.x, building a `SessionMiddleware` installs the
#: session class that rebuilt sessions need (`_sdk/session_v1.py`); on mcp 2.x, the first
#: of these imports starts noting which request-state policies are ephemeral
#: (`_sdk/request_state.py`).
_LAZY = {
    "MemoryEventStore": "mcp_db.event_store",
    "RedisEventStore": "mcp_db.event_store",
    "SessionEventStore": "mcp_db.event_store",
    "UnattachedStoreWarning": "mcp_db.event_store",
    "SessionMiddleware": "mcp_db.middleware",
    "RedisSubscriptionBus": "mcp_db.subscriptions",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mcp_db' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "ConfigError",
    "McpDbError",
    "MemoryEventStore",
    "RedisEventStore",
    "RedisOutOfMemoryError",
    "RedisSubscriptionBus",
    "RedisUnavailableError",
    "SessionEventStore",
    "SessionMiddleware",
    "StoreTimeoutError",
    "UnattachedStoreWarning",
    "__version__",
]
