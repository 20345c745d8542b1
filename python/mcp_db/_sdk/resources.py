"""Handshake-era resource subscriptions and change notifications, through the SDK.

:func:`install` makes the lowlevel server's ``resources/subscribe`` and
``resources/unsubscribe`` call ``record(session_id, uri, on)`` before the server's own
handler, if it has one (``record`` raises :class:`Refused` to refuse). A server without
one answers them from then on with an empty result: the subscription is mcp-db's to keep.

:func:`notify` hands a notification to a session's transport exactly as the session's
``ServerSession.send_*`` would: the transport stores it in the event store (so a GET stream
that reconnects with ``Last-Event-ID`` replays it) and sends it on the GET stream.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

from mcp.shared.message import SessionMessage

from mcp_db._sdk import SDK_MAJOR, decode

Record = Callable[[str, str, bool], Awaitable[None]]

#: Marks a handler of ours, so installing twice wraps nothing twice.
_OURS = "_mcp_db_subscriptions"
_SESSION_HEADER = "mcp-session-id"


class Refused(Exception):
    """A subscription mcp-db will not record: the client gets ``code`` and the message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def notification(method: str, params: dict[str, Any] | None = None) -> Any:
    """A server-to-client notification, as the SDK's own message class."""
    body: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        body["params"] = params
    return SessionMessage(decode("n", json.dumps(body).encode()))


async def notify(transport: Any, message: Any) -> bool:
    """Sends ``message`` to the session of ``transport`` (``False``: it has ended)."""
    stream = getattr(transport, "_write_stream", None)
    if stream is None:
        return False
    try:
        await stream.send(message)
    except Exception:  # the session ended (closed stream) meanwhile
        return False
    return True


def _session_of(request: Any) -> str | None:
    headers = getattr(request, "headers", None)
    return headers.get(_SESSION_HEADER) if headers is not None else None


async def _recorded(
    record: Record, session_id: str | None, uri: str, on: bool, serve: Callable[[], Awaitable[Any]]
) -> Any:
    """Records the (un)subscription, then lets the server answer; a subscription the server
    then refuses (its handler raises) is taken back."""
    if session_id is None:  # no session (a stateless request): nothing to keep
        return await serve()
    await record(session_id, uri, on)
    try:
        return await serve()
    except BaseException:
        if on:
            with contextlib.suppress(Exception):
                await record(session_id, uri, False)
        raise


def install(server: Any, record: Record) -> None:
    """Puts ``record`` in front of the server's ``resources/(un)subscribe`` handlers."""
    if SDK_MAJOR >= 2:
        _install_v2(server, record)
    else:
        _install_v1(server, record)


def _install_v2(server: Any, record: Record) -> None:
    from mcp.shared.exceptions import MCPError
    from mcp_types import EmptyResult, SubscribeRequestParams, UnsubscribeRequestParams

    entries = server._request_handlers
    for method, params_type, on in (
        ("resources/subscribe", SubscribeRequestParams, True),
        ("resources/unsubscribe", UnsubscribeRequestParams, False),
    ):
        entry = entries.get(method)
        theirs = entry.handler if entry is not None else None
        if getattr(theirs, _OURS, False):
            continue

        async def handler(ctx: Any, params: Any, theirs: Any = theirs, on: bool = on) -> Any:
            async def serve() -> Any:
                return EmptyResult() if theirs is None else await theirs(ctx, params)

            session_id = _session_of(ctx.request)
            try:
                return await _recorded(record, session_id, str(params.uri), on, serve)
            except Refused as refused:
                raise MCPError(refused.code, str(refused)) from None

        setattr(handler, _OURS, True)
        server.add_request_handler(
            method, entry.params_type if entry is not None else params_type, handler
        )


def _install_v1(server: Any, record: Record) -> None:
    # Typed as Any: this module is also type-checked against 2.x, where these names differ.
    from mcp import types as sdk_types
    from mcp.server.lowlevel.server import request_ctx  # type: ignore[attr-defined]
    from mcp.shared.exceptions import McpError  # type: ignore[attr-defined]

    types: Any = sdk_types

    handlers = server.request_handlers
    for request_type, on in ((types.SubscribeRequest, True), (types.UnsubscribeRequest, False)):
        theirs = handlers.get(request_type)
        if getattr(theirs, _OURS, False):
            continue

        async def handler(req: Any, theirs: Any = theirs, on: bool = on) -> Any:
            async def serve() -> Any:
                if theirs is None:
                    return types.ServerResult(types.EmptyResult())
                return await theirs(req)

            session_id = _session_of(getattr(request_ctx.get(None), "request", None))
            try:
                return await _recorded(record, session_id, str(req.params.uri), on, serve)
            except Refused as refused:
                error = types.ErrorData(code=refused.code, message=str(refused))
                raise McpError(error) from None

        setattr(handler, _OURS, True)
        handlers[request_type] = handler
