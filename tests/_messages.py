"""Builds JSON-RPC messages the way the installed SDK line hands them to a store."""

from __future__ import annotations

from typing import Any

from mcp_db._sdk import SDK_MAJOR

if SDK_MAJOR >= 2:
    from mcp_types import JSONRPCError, JSONRPCNotification, JSONRPCRequest, JSONRPCResponse

    def wrap(message: Any) -> Any:
        return message

    def sdk_json(message: Any) -> str:
        return message.model_dump_json(by_alias=True, exclude_unset=True)

    def unwrap(message: Any) -> Any:
        return message
else:
    from mcp.types import (
        JSONRPCError,
        JSONRPCMessage,
        JSONRPCNotification,
        JSONRPCRequest,
        JSONRPCResponse,
    )

    def wrap(message: Any) -> Any:
        return JSONRPCMessage(message)

    def sdk_json(message: Any) -> str:
        return message.model_dump_json(by_alias=True, exclude_none=True)

    def unwrap(message: Any) -> Any:
        return message.root


def notification(n: int, text: str = "") -> Any:
    return wrap(
        JSONRPCNotification(
            jsonrpc="2.0",
            method="notifications/progress",
            params={"progressToken": "tok", "progress": n, "total": 100.5, "message": text},
        )
    )


def request(request_id: int | str, method: str = "sampling/createMessage") -> Any:
    return wrap(
        JSONRPCRequest(jsonrpc="2.0", id=request_id, method=method, params={"x": [1, 2.5, None]})
    )


def response(request_id: int | str, payload: Any) -> Any:
    return wrap(JSONRPCResponse(jsonrpc="2.0", id=request_id, result={"content": payload}))


def error(request_id: int | str) -> Any:
    return wrap(
        JSONRPCError(
            jsonrpc="2.0", id=request_id, error={"code": -32601, "message": "no such method"}
        )
    )


def mixed(request_id: int | str) -> list[Any]:
    """Every message class, with unicode, nesting, floats, nulls and extra fields."""
    return [
        notification(1, 'héllo ✓ \u2028 "quoted" \\ back'),
        request(f"srv-{request_id}"),
        notification(2, "x" * 5000),
        error(f"srv-{request_id}"),
        response(request_id, [{"type": "text", "text": "日本語", "deep": {"a": [1, {"b": None}]}}]),
    ]


def steps_call(n: int, delay: float, token: str, cut_at: int = -1) -> dict[str, Any]:
    """The JSON body of a ``tools/call`` of the test servers' ``steps`` tool: ``n`` progress
    notifications (tagged ``token``), ``delay`` seconds apart, then ``done <n>``; the
    server ends the call's event stream after notification ``cut_at``, if any."""
    return {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {
            "name": "steps",
            "arguments": {"n": n, "delay": delay, "cut_at": cut_at},
            "_meta": {"progressToken": token},
        },
    }
