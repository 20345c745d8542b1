"""Adapter for ``mcp`` 1.x: messages are ``mcp.types.JSONRPCMessage`` root models.

The transport writes ``message.model_dump_json(by_alias=True, exclude_none=True)``; the
store keeps exactly those bytes and a one-letter tag naming the concrete class, so replay
validates each message against its own class instead of trying the whole union.
"""

from __future__ import annotations

from typing import Any

from mcp import types as _types

from mcp_db._sdk._construct import RunDecoder

# Typed as Any: this module is also type-checked against 2.x, where these names differ.
JSONRPCMessage: Any = _types.JSONRPCMessage
JSONRPCRequest: Any = _types.JSONRPCRequest
JSONRPCNotification: Any = _types.JSONRPCNotification
JSONRPCResponse: Any = _types.JSONRPCResponse
JSONRPCError: Any = _types.JSONRPCError

_TAGS: dict[type[Any], str] = {
    JSONRPCRequest: "q",
    JSONRPCNotification: "n",
    JSONRPCResponse: "r",
    JSONRPCError: "e",
}
_CLASSES = {tag: cls for cls, tag in _TAGS.items()}
_RUNS = {tag: RunDecoder(cls, root=JSONRPCMessage) for tag, cls in _CLASSES.items()}


def _tag(message: Any) -> str:
    tag = _TAGS.get(type(message))
    if tag is None:  # a subclass: rare, so the slow path is fine
        tag = next(t for cls, t in _TAGS.items() if isinstance(message, cls))
    return tag


def encode(message: Any) -> tuple[str, bytes]:
    """The message's tag and its JSON, byte for byte as the SDK would send it."""
    root = message.root
    data = root.__pydantic_serializer__.to_json(root, by_alias=True, exclude_none=True)
    return _tag(root), data


def decode(tag: str, data: bytes) -> Any:
    root = _CLASSES[tag].model_validate_json(data)
    # The root is already validated; wrapping it must not validate the union again.
    return JSONRPCMessage.model_construct(root=root)


def decode_run(tag: str, data: bytes) -> list[Any]:
    """Messages of one kind from a JSON array of them, as the SDK would have them."""
    return _RUNS[tag](data)
