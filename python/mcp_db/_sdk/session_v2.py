"""mcp 2.x: a session served on a ``Connection`` that is initialized from the start.

The manager enters the server's lifespan once, in ``run()``, and hands its state to each
session; a rebuilt session reuses it and never re-enters the lifespan.
"""

from __future__ import annotations

from typing import Any

import anyio
from mcp.server.connection import Connection
from mcp.server.runner import serve_connection
from mcp.shared.jsonrpc_dispatcher import JSONRPCDispatcher
from mcp_types import InitializeRequestParams
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION


def install() -> None:
    """Nothing to install: 2.x builds a session on a ``Connection`` it is handed."""


def parse_client_params(init_params: dict[str, Any]) -> Any:
    return InitializeRequestParams.model_validate(init_params, by_name=False)


async def serve_initialized(
    manager: Any, transport: Any, read: Any, write: Any, client_params: Any, protocol: str | None
) -> None:
    """The manager's per-session server task, on a connection born initialized."""
    if protocol not in HANDSHAKE_PROTOCOL_VERSIONS:
        requested = client_params.protocol_version
        protocol = (
            requested if requested in HANDSHAKE_PROTOCOL_VERSIONS else LATEST_HANDSHAKE_VERSION
        )
    idle_scope = transport.idle_scope if transport.idle_scope is not None else anyio.CancelScope()
    with idle_scope:
        dispatcher = JSONRPCDispatcher(read, write, inline_methods=frozenset({"initialize"}))
        connection = Connection.for_loop(dispatcher, session_id=transport.mcp_session_id)
        connection.client_params = client_params
        connection.protocol_version = protocol
        connection.initialized.set()
        await serve_connection(
            manager.app, dispatcher, connection=connection, lifespan_state=manager._lifespan_state
        )
