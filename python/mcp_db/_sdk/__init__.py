"""What mcp-db needs from the MCP SDK, behind one interface per SDK line.

``mcp`` 1.x keeps its types in ``mcp.types`` and hands the store a ``JSONRPCMessage``
root model; 2.x moved them to the ``mcp_types`` package and hands the store the concrete
message class. Everything version-specific lives in :mod:`v1` and :mod:`v2`.
"""

from __future__ import annotations

from importlib.metadata import version as _dist_version

from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId

SDK_VERSION: str = _dist_version("mcp")
SDK_MAJOR: int = int(SDK_VERSION.split(".")[0])

if SDK_MAJOR >= 2:
    from mcp_db._sdk.v2 import decode, decode_run, encode
else:
    from mcp_db._sdk.v1 import decode, decode_run, encode


__all__ = [
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
]
