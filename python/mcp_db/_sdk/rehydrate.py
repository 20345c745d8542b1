"""Rebuilding a session's SDK transport on a node that never saw its ``initialize``.

The transport is built exactly as the manager builds one, started in the manager's task
group, and its server session starts out initialized with the client's stored
``initialize`` params, so the request that triggered it (and every later one) is served as
if this node had handled the handshake. The per-SDK-line part, how a server session is
born initialized, lives in :mod:`session_v1` and :mod:`session_v2`; :func:`install` makes
the SDK ready for it (idempotent; ``SessionMiddleware`` calls it).
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import anyio
import mcp.server.streamable_http_manager as _manager_module

from mcp_db._sdk import SDK_MAJOR

if SDK_MAJOR >= 2:
    from mcp_db._sdk.session_v2 import install, parse_client_params, serve_initialized
else:
    from mcp_db._sdk.session_v1 import install, parse_client_params, serve_initialized

logger = logging.getLogger("mcp_db")

__all__ = ["TooManySessions", "forget", "install", "rehydrate"]


class TooManySessions(Exception):
    """The manager is at ``max_sessions``; the SDK answers 503 in that case too."""


def _transport_options(manager: Any) -> dict[str, Any]:
    """The options the manager itself gives a new stateful transport."""
    options: dict[str, Any] = {
        "is_json_response_enabled": manager.json_response,
        "event_store": manager.event_store,
        "security_settings": manager.security_settings,
    }
    if hasattr(manager, "session_idle_timeout"):  # 1.2x and 2.x
        options["retry_interval"] = manager.retry_interval
        options["idle_timeout"] = manager.session_idle_timeout
    return options


async def forget(manager: Any, session_id: str, transport: Any) -> None:
    """Unregisters ``transport`` (only if ``session_id`` still maps to it: after an idle reap
    the session may already have been rebuilt) and terminates it."""
    if manager._server_instances.get(session_id) is transport:
        manager._server_instances.pop(session_id, None)
        owners = getattr(manager, "_session_owners", None)
        if owners is not None:
            owners.pop(session_id, None)
    if not transport.is_terminated:
        with anyio.CancelScope(shield=True):
            await transport.terminate()


async def _serve(
    manager: Any,
    transport: Any,
    client_params: Any,
    protocol: str | None,
    *,
    task_status: Any = anyio.TASK_STATUS_IGNORED,
) -> None:
    session_id = transport.mcp_session_id
    async with transport.connect() as (read_stream, write_stream):
        task_status.started()
        try:
            await serve_initialized(
                manager, transport, read_stream, write_stream, client_params, protocol
            )
        except Exception:
            logger.exception("rehydrated session %s stopped with an error", session_id[:8])
        finally:
            await forget(manager, session_id, transport)


async def rehydrate(
    manager: Any,
    session_id: str,
    init_params: dict[str, Any],
    *,
    principal: Any = None,
    protocol: str | None = None,
) -> Any:
    """Builds, starts and registers the transport of ``session_id``, initialized with the
    client's ``init_params`` (the wire-format ``initialize`` params). Returns once it can take
    requests. Callers serialize calls per session; an already registered session is returned.
    """
    existing = manager._server_instances.get(session_id)
    if existing is not None:
        return existing
    if manager._task_group is None:
        raise RuntimeError("the session manager is not running (its lifespan has not started)")
    max_sessions = getattr(manager, "max_sessions", None)
    if max_sessions is not None and len(manager._server_instances) >= max_sessions:
        raise TooManySessions(session_id)
    client_params = parse_client_params(init_params)
    # Looked up on the manager's module, as the manager does, so a patched class applies.
    transport = _manager_module.StreamableHTTPServerTransport(  # type: ignore[attr-defined]
        mcp_session_id=session_id, **_transport_options(manager)
    )
    await manager._task_group.start(partial(_serve, manager, transport, client_params, protocol))
    if transport.is_terminated:
        raise RuntimeError(f"rehydrated session {session_id[:8]} failed to start")
    # Registered only once connected, so no request reaches it half-built. The binding dict
    # of ``attach`` scopes its event store to the session here.
    if principal is not None and hasattr(manager, "_session_owners"):
        manager._session_owners[session_id] = principal
    manager._server_instances[session_id] = transport
    # The SDK arms the idle deadline when a request finishes; arm it now so a session rebuilt
    # for a request that never reaches the transport is still reaped.
    timeout = getattr(manager, "session_idle_timeout", None)
    idle_scope = getattr(transport, "idle_scope", None)
    if timeout is not None and idle_scope is not None:
        idle_scope.deadline = anyio.current_time() + timeout
    return transport
