"""What mcp-db needs from the MCP SDK, behind one interface per SDK line.

``mcp`` 1.x keeps its types in ``mcp.types`` and hands the store a ``JSONRPCMessage``
root model; 2.x moved them to the ``mcp_types`` package and hands the store the concrete
message class. Everything version-specific lives in :mod:`v1` and :mod:`v2` (messages, the
handshake versions), :mod:`session_v1` and :mod:`session_v2` (a session born initialized).
The manager's and transports' private parts are reached through :mod:`manager` only, the
SDK's authentication through :mod:`auth`, rebuilding a session through :mod:`rehydrate`,
the request-state key ring (2.x; 1.x has none) through :mod:`request_state`.
"""

from __future__ import annotations

from importlib.metadata import version as _dist_version

from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp.types import InitializeRequestParams  # both lines (2.x re-exports mcp_types)

SDK_VERSION: str = _dist_version("mcp")
SDK_MAJOR: int = int(SDK_VERSION.split(".")[0])


def _release(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


if _release(SDK_VERSION) < (1, 12, 4) or SDK_MAJOR >= 3:
    raise ImportError(
        f"mcp-db supports mcp >= 1.12.4, < 3 (the first with a resumable event store, and "
        f"the 2.x line); mcp {SDK_VERSION} is installed: pip install 'mcp>=1.12.4,<3'"
    )

if SDK_MAJOR >= 2:
    from mcp_db._sdk.request_state import request_keys, track
    from mcp_db._sdk.v2 import HANDSHAKE_VERSIONS, decode, decode_run, encode

    # As soon as mcp-db's SDK layer is imported (the store, the middleware or the bus), so
    # that the servers built afterwards (all of them, when the imports come first) can say
    # whether their request-state keys are ephemeral.
    track()
else:
    from mcp_db._sdk.v1 import HANDSHAKE_VERSIONS, decode, decode_run, encode, request_keys


def valid_initialize_params(params: object) -> bool:
    """Whether the SDK's own model accepts ``params`` of an ``initialize`` request. The SDK
    creates a transport for any ``initialize`` and only then finds its params invalid,
    leaving a session nobody can use."""
    try:
        InitializeRequestParams.model_validate(params)
    except ValueError:  # pydantic's ValidationError
        return False
    return True


__all__ = [
    "HANDSHAKE_VERSIONS",
    "SDK_MAJOR",
    "SDK_VERSION",
    "EventCallback",
    "EventId",
    "EventMessage",
    "EventStore",
    "StreamId",
    "decode",
    "decode_run",
    "encode",
    "request_keys",
    "valid_initialize_params",
]
