"""Adapter for ``mcp`` 1.x: messages are ``mcp.types.JSONRPCMessage`` root models.

The transport writes ``message.model_dump_json(by_alias=True, exclude_none=True)``; the
store keeps exactly those bytes and a one-letter tag naming the concrete class, so replay
rebuilds each message as its own class instead of trying the whole union.
"""

from __future__ import annotations

from typing import Any

from mcp import types as _types
from mcp.shared.version import SUPPORTED_PROTOCOL_VERSIONS  # type: ignore[import-not-found]

from mcp_db._sdk._codec import Codec

#: Protocol versions that have sessions. The 1.x line knows no other era: every version it
#: speaks has them. 2025-11-25 is also of that era though mcp 1.12 predates it: the SDK still
#: opens a session for an ``initialize`` carrying it, and that session must be recorded.
HANDSHAKE_VERSIONS: frozenset[str] = frozenset(SUPPORTED_PROTOCOL_VERSIONS) | {"2025-11-25"}

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


def request_keys(manager: Any) -> dict[str, Any] | None:
    """Always ``None``: the 1.x line speaks no protocol with request state (2026-07-28), so
    its nodes have no request-state keys to compare."""
    return None
