"""mcp 1.x: a ``ServerSession`` that can be born initialized.

``Server.run`` builds its ``ServerSession`` from its module's global name, so
:func:`install` (called by ``SessionMiddleware``, idempotent) points that name at a
subclass. It only has to happen before a session is rebuilt, so import order is free.
The subclass behaves exactly like the SDK's unless the task that builds it set
``_BORN_WITH`` (only :func:`serve_initialized` does). Every other request
of a session reaches the node that owns it (the relay), ``notifications/initialized``
included, so sessions the SDK builds itself need no change at all.
"""

from __future__ import annotations

import contextvars
from typing import Any

import anyio
import mcp.server.lowlevel.server as _lowlevel
from mcp import types
from mcp.server.session import InitializationState, ServerSession

_BORN_WITH: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "mcp_db_client_params", default=None
)


class _RehydratableSession(ServerSession):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        params = _BORN_WITH.get()
        if params is not None:
            _BORN_WITH.set(None)
            self._client_params = params
            self._initialization_state = InitializationState.Initialized


def install() -> None:
    """Makes every server session of this process buildable initialized. Idempotent."""
    _lowlevel.ServerSession = _RehydratableSession  # type: ignore[misc]


def parse_client_params(init_params: dict[str, Any]) -> Any:
    return types.InitializeRequestParams.model_validate(init_params)


async def serve_initialized(
    manager: Any, transport: Any, read: Any, write: Any, client_params: Any, protocol: str | None
) -> None:
    """The manager's per-session server task, with the session born initialized."""
    async with anyio.create_task_group() as tasks:
        idle_scope = getattr(transport, "idle_scope", None)
        if idle_scope is not None:

            async def end_when_idle() -> None:
                with idle_scope:
                    await anyio.sleep_forever()
                tasks.cancel_scope.cancel()

            tasks.start_soon(end_when_idle)
        _BORN_WITH.set(client_params)
        # 1.x enters the server's lifespan once per session, in Server.run, by design.
        await manager.app.run(
            read, write, manager.app.create_initialization_options(), stateless=False
        )
        tasks.cancel_scope.cancel()
