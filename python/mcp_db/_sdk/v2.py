"""Adapter for ``mcp`` 2.x: messages are the concrete ``mcp_types`` classes.

The transport writes ``message.model_dump_json(by_alias=True, exclude_unset=True)``; the
store keeps exactly those bytes. Rebuilding them (by validation or construction) marks the
same fields as set, so the replayed message serializes to the same bytes.
"""

from __future__ import annotations

from mcp_types import (
    JSONRPCError,
    JSONRPCMessage,
    JSONRPCNotification,
    JSONRPCRequest,
    JSONRPCResponse,
)
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

from mcp_db._sdk._codec import Codec

#: Protocol versions that have sessions; requests of any other version pass through.
HANDSHAKE_VERSIONS: frozenset[str] = frozenset(HANDSHAKE_PROTOCOL_VERSIONS)

_codec = Codec(JSONRPCRequest, JSONRPCNotification, JSONRPCResponse, JSONRPCError)
decode = _codec.decode
decode_run = _codec.decode_run


def encode(message: JSONRPCMessage) -> tuple[str, bytes]:
    """The message's tag and its JSON, byte for byte as the SDK would send it."""
    data = message.__pydantic_serializer__.to_json(message, by_alias=True, exclude_unset=True)
    return _codec.tag(message), data
