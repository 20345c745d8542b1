"""The Python ends of the relay (the frames travel in Rust, ``src/relay.rs``).

- :func:`pump` writes a forwarded request's response to this node's client, frame by
  frame, and tells the owner when the client goes away.
- :func:`serve` runs a request relayed to this node through the whole ASGI app (so the
  app's authentication runs here too) and streams its response back.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio

logger = logging.getLogger("mcp_db")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Scope key marking a request this node runs for another node (value: that node's ID).
RELAYED = "mcp_db.relayed_from"

_SCOPE_KEYS = ("http_version", "method", "scheme", "path", "root_path", "client", "server")


def encode_head(scope: Scope) -> str:
    """What the owner needs of a request besides its body, as JSON."""
    head = {key: scope.get(key) for key in _SCOPE_KEYS}
    head["raw_path"] = (scope.get("raw_path") or b"").decode("latin-1")
    head["query_string"] = scope.get("query_string", b"").decode("latin-1")
    head["headers"] = [
        [name.decode("latin-1"), value.decode("latin-1")] for name, value in scope["headers"]
    ]
    return json.dumps(head, separators=(",", ":"))


def decode_head(head: str, state: dict[str, Any] | None, relayed_from: str) -> Scope:
    fields = json.loads(head)
    scope: Scope = {key: fields.get(key) for key in _SCOPE_KEYS}
    scope.update(
        type="http",
        asgi={"version": "3.0", "spec_version": "2.3"},
        raw_path=fields["raw_path"].encode("latin-1") or None,
        query_string=fields["query_string"].encode("latin-1"),
        headers=[(n.encode("latin-1"), v.encode("latin-1")) for n, v in fields["headers"]],
        state=dict(state or {}),
        extensions={},
    )
    for key in ("client", "server"):
        if isinstance(scope[key], list):
            scope[key] = tuple(scope[key])
    scope[RELAYED] = relayed_from
    return scope


async def pump(forward: Any, receive: Receive, send: Send) -> bool:
    """Streams ``forward``'s response to the client; ``False`` if it was lost before any of
    it could be sent (the caller then answers instead)."""
    started = False

    async def watch_client(scope: anyio.CancelScope) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                forward.cancel()
                scope.cancel()
                return

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch_client, tg.cancel_scope)
        while True:
            frame = forward.try_next()
            if frame is None:
                frame = await forward.next()
            kind = frame[0]
            if kind == "data":
                await send({"type": "http.response.body", "body": frame[1], "more_body": True})
            elif kind == "start":
                await send({"type": "http.response.start", "status": frame[1], "headers": frame[2]})
                started = True
            else:
                if kind == "lost":
                    logger.warning("relayed response broke off: %s", frame[1])
                if started:
                    # A cut SSE stream is what a client resumes from (Last-Event-ID).
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                break
        tg.cancel_scope.cancel()
    return started


async def serve(
    app: App,
    relay: Any,
    request_id: bytes,
    relayed_from: str,
    head: str,
    body: bytes,
    state: dict[str, Any] | None,
) -> None:
    """Runs one relayed request on this node and streams the response back."""
    scope = decode_head(head, state, relayed_from)
    body_pending = True

    async def receive() -> Message:
        nonlocal body_pending
        if body_pending:
            body_pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        await relay.disconnected(request_id)
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [(bytes(n), bytes(v)) for n, v in message.get("headers", ())]
            relay.start(request_id, message["status"], headers)
        elif message["type"] == "http.response.body":
            chunk = message.get("body", b"")
            if chunk:
                waiting = relay.send(request_id, bytes(chunk))
                if waiting is not None:
                    await waiting  # the window is full: wait for the client to catch up

    ok = False
    try:
        await app(scope, receive, send)
        ok = True
    except Exception:
        logger.exception("relayed request from %s failed", relayed_from)
    finally:
        relay.end(request_id, ok)
