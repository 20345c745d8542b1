"""FastMCP 4 (``fastmcp`` on PyPI, built on mcp 2.x): where its apps differ from the SDK's.

- ``http_app()`` creates its session manager inside the app's lifespan, a new one each
  time the lifespan starts, so the manager can only be found once the app has started.
  ``SessionMiddleware`` looks for it then (and the store's ``attach`` takes it then too).
- Its manager's ``event_store`` is a property: every read returns a new
  ``SessionScopedEventStore`` around the store the app was given, with a random stream
  prefix of its own. The SDK reads it once per new transport, so each transport gets such
  a wrapper. mcp-db scopes events to the real session ID instead, so a stream resumes on
  any node: the configured store is read from ``_shared_event_store``, and a transport's
  wrapper is recognised and replaced by the store's view of that session.

Nothing here imports ``fastmcp``: these are checks on the objects an app hands over.
"""

from __future__ import annotations

from typing import Any

__all__ = ["configured_store", "is_fastmcp_manager", "unwrap_store"]

#: FastMCP's per-transport wrapper of the configured store, by module and name.
_WRAPPER = ("fastmcp.server.session_scoped_event_store", "SessionScopedEventStore")


def is_fastmcp_manager(manager: Any) -> bool:
    return type(manager).__module__.startswith("fastmcp.")


def configured_store(manager: Any) -> Any:
    """The event store ``manager`` was given (``None`` if none), not a fresh wrapper."""
    if is_fastmcp_manager(manager) and hasattr(manager, "_shared_event_store"):
        return manager._shared_event_store
    return manager.event_store


def unwrap_store(event_store: Any) -> Any:
    """The store inside FastMCP's per-transport wrapper, or ``event_store`` itself."""
    kind = type(event_store)
    if (kind.__module__, kind.__name__) == _WRAPPER:
        return getattr(event_store, "_event_store", event_store)
    return event_store
