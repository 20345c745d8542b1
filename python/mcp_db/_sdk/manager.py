"""The SDK's ``StreamableHTTPSessionManager``, through the private parts mcp-db uses.

Every SDK line from 1.12.4 to 2.x keeps its live sessions in ``_server_instances`` (a plain
dict, session ID -> transport) and, from 1.2x, the principal that created each one in
``_session_owners``. Each transport keeps its event store in ``_event_store`` and its open
streams in ``_request_streams``. FastMCP 4's manager is the SDK's, with a different
``event_store`` (see :mod:`fastmcp`). Nothing outside ``_sdk/`` touches these names.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from mcp_db._sdk.fastmcp import configured_store, unwrap_store
from mcp_db.errors import ConfigError

__all__ = [
    "bind_transports",
    "find_session_manager",
    "find_session_managers",
    "hook_entry_point",
    "live_transports",
    "on_startup",
    "stream_is_live",
]

_INNER = ("session_manager", "app", "endpoint", "routes", "router", "middleware_stack")


def find_session_managers(app: Any, depth: int = 12) -> list[tuple[str, Any]]:
    """Every ``StreamableHTTPSessionManager`` inside a Starlette (or FastAPI) app, each with
    the path of its route (the paths of the mounts it is under, joined), in route order.

    FastMCP's app creates its manager when its lifespan starts: call this after that."""
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
    from starlette.routing import BaseRoute

    found: list[tuple[str, Any]] = []
    seen: set[int] = set()

    def visit(obj: Any, path: str, left: int) -> None:
        if obj is None or left == 0 or id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, StreamableHTTPSessionManager):
            found.append((path or "/", obj))
            return
        own_path = getattr(obj, "path", None)
        if isinstance(obj, BaseRoute) and isinstance(own_path, str):
            path += own_path
        for name in _INNER:
            value = getattr(obj, name, None)
            for inner in value if isinstance(value, list) else (value,):
                if inner is not None and not isinstance(inner, (str, bytes, int, float)):
                    visit(inner, path, left - 1)

    visit(app, "", depth)
    return found


def find_session_manager(app: Any) -> Any:
    """The first ``StreamableHTTPSessionManager`` inside a Starlette app (or ``None``)."""
    found = find_session_managers(app)
    return found[0][1] if found else None


def on_startup(app: Any, then: Callable[[], None]) -> bool:
    """Calls ``then()`` each time the Starlette ``app``'s lifespan has started (FastMCP's
    session manager exists from then on); ``False`` if ``app`` has no lifespan to wrap."""
    router: Any = getattr(app, "router", None)
    inner = getattr(router, "lifespan_context", None)
    if inner is None:
        return False

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[Any]:
        async with inner(app) as state:
            then()
            yield state

    router.lifespan_context = lifespan
    return True


def hook_entry_point(manager: Any, handler: Any) -> Any:
    """Makes the SDK's route hand each request to ``handler`` in place of the manager, and
    returns the manager's own entry point for ``handler`` to call. 1.2x and 2.x route
    through ``asgi_app`` (the manager's body-size limit); 1.12 through ``handle_request``."""
    name = "asgi_app" if hasattr(manager, "asgi_app") else "handle_request"
    inner = getattr(manager, name)
    setattr(manager, name, handler)
    return inner


def live_transports(manager: Any) -> dict[str, Any]:
    """The manager's live sessions: session ID -> transport. The SDK never replaces this
    dict (it only clears it when the manager stops), so callers may keep it."""
    instances: dict[str, Any] = manager._server_instances
    return instances


class _BindingDict(dict):  # type: ignore[type-arg]
    """The manager's ``_server_instances``: binds each transport as it is registered.

    Every SDK line (1.12.4 through 2.x) registers a new transport here before it handles
    its first request, and keeps the store in the transport's ``_event_store``.
    """

    def __init__(
        self, store: Any, view: Callable[[str, Any], Any], existing: dict[str, Any]
    ) -> None:
        super().__init__()
        self.store = store
        self.view = view
        for session_id, transport in existing.items():
            self[session_id] = transport

    def __setitem__(self, session_id: str, transport: Any) -> None:
        if unwrap_store(getattr(transport, "_event_store", None)) is self.store:
            transport._event_store = self.view(session_id, transport)
        super().__setitem__(session_id, transport)


def bind_transports(manager: Any, store: Any, view: Callable[[str, Any], Any]) -> None:
    """Gives every transport ``manager`` registers (and every one it holds), whose event
    store is ``store`` (FastMCP: wrapped), the store ``view(session_id, transport)``
    instead. Idempotent for one store; raises ConfigError if the manager is bound to
    another store already."""
    instances = getattr(manager, "_server_instances", None)
    if not isinstance(instances, dict) or not hasattr(manager, "event_store"):
        from mcp_db._sdk import SDK_VERSION

        raise ConfigError(
            f"cannot attach to {type(manager).__name__}: expected the SDK's "
            f"StreamableHTTPSessionManager (mcp {SDK_VERSION} is installed)"
        )
    current = configured_store(manager)
    if current is None:
        manager.event_store = store
    elif current is not store:
        raise ConfigError(
            f"the session manager was built with event_store={current!r}; "
            "pass this store as its event_store, or attach that one"
        )
    if isinstance(instances, _BindingDict):
        if instances.store is not store:
            raise ConfigError("the session manager is already attached to another store")
        return
    manager._server_instances = _BindingDict(store, view, instances)


def stream_is_live(transport: Any, stream_id: str) -> bool:
    """Whether ``transport`` delivers ``stream_id`` live (it registered the stream)."""
    return stream_id in getattr(transport, "_request_streams", {})
