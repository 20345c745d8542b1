"""Adapter for ``mcp`` 1.x: messages are ``mcp.types.JSONRPCMessage`` root models.

The transport writes ``message.model_dump_json(by_alias=True, exclude_none=True)``; the
store keeps exactly those bytes and a one-letter tag naming the concrete class, so replay
rebuilds each message as its own class instead of trying the whole union.
"""

from __future__ import annotations

from typing import Any

from mcp import types as _types

from mcp_db._sdk._codec import Codec

# Typed as Any: this module is also type-checked against 2.x, where these names differ.
_codec = Codec(
    _types.JSONRPCRequest,
    _types.JSONRPCNotification,
    _types.JSONRPCResponse,
    _types.JSONRPCError,
    root=_types.JSONRPCMessage,
)
decode = _codec.decode
decode_run = _codec.decode_run


def encode(message: Any) -> tuple[str, bytes]:
    """The message's tag and its JSON, byte for byte as the SDK would send it."""
    root = message.root
    data = root.__pydantic_serializer__.to_json(root, by_alias=True, exclude_none=True)
    return _codec.tag(root), data
