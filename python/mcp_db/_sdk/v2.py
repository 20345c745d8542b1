"""Adapter for ``mcp`` 2.x: messages are the concrete ``mcp_types`` classes.

The transport writes ``message.model_dump_json(by_alias=True, exclude_unset=True)``; the
store keeps exactly those bytes. Validating them again marks the same fields as set, so
the replayed message serializes to the same bytes.
"""

from __future__ import annotations

from typing import Any

from mcp_types import (
    JSONRPCError,
    JSONRPCMessage,
    JSONRPCNotification,
    JSONRPCRequest,
    JSONRPCResponse,
)

from mcp_db._sdk._construct import RunDecoder

_TAGS: dict[type[Any], str] = {
    JSONRPCRequest: "q",
    JSONRPCNotification: "n",
    JSONRPCResponse: "r",
    JSONRPCError: "e",
}
_CLASSES = {tag: cls for cls, tag in _TAGS.items()}
_RUNS = {tag: RunDecoder(cls) for tag, cls in _CLASSES.items()}


def _tag(message: Any) -> str:
    tag = _TAGS.get(type(message))
    if tag is None:  # a subclass: rare, so the slow path is fine
        tag = next(t for cls, t in _TAGS.items() if isinstance(message, cls))
    return tag


def encode(message: JSONRPCMessage) -> tuple[str, bytes]:
    """The message's tag and its JSON, byte for byte as the SDK would send it."""
    data = message.__pydantic_serializer__.to_json(message, by_alias=True, exclude_unset=True)
    return _tag(message), data


def decode(tag: str, data: bytes) -> JSONRPCMessage:
    message: JSONRPCMessage = _CLASSES[tag].model_validate_json(data)
    return message


def decode_run(tag: str, data: bytes) -> list[Any]:
    """Messages of one kind from a JSON array of them, as the SDK would have them."""
    return _RUNS[tag](data)
