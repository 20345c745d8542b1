"""The Python ends of the relay (the frames travel in Rust, ``crates/core/src/relay/``).

- :func:`pump` writes a forwarded request's response to this node's client, frame by
  frame, and tells the owner when the client goes away.
- :func:`serve` runs a request relayed to this node through the whole ASGI app (so the
  app's authentication runs here too) and streams its response back.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
from typing import Any

from mcp_db._asgi import HANDED_OFF_VALUE, MOVED_HEADER, App, Message, Receive, Scope, Send
from mcp_db._core import Chunk, Cut, End, Forward, Head, RelayedRequest, Whole

logger = logging.getLogger("mcp_db")

#: A part of a relayed response (``Forward.next``).
Part = Whole | Head | Chunk | End | Cut

#: Scope key marking a request this node runs for another node (value: that node's ID).
RELAYED = "mcp_db.relayed_from"
#: A response held to go out whole (``_Response``) is streamed once its body is larger.
_HOLD_LIMIT = 256 * 1024
#: How long a relayed response may take before its client is watched for going away.
_WATCH_AFTER = 0.05
#: How long a POST's event stream is held to go out whole before it is streamed.
_HEAD_DELAY = 0.02

#: Scope key: the ``(path, root_path)`` a request had when it entered ``SessionMiddleware``.
#: Mounts rewrite both on the way in; the owner serves a relayed request from the top of
#: the app again, so it must get them as they were there.
ENTRY = "mcp_db.entry"

_SCOPE_KEYS = ("http_version", "method", "scheme", "path", "root_path", "client", "server")


def encode_head(scope: Scope) -> str:
    """What the owner needs of a request besides its body, as JSON."""
    head = {key: scope.get(key) for key in _SCOPE_KEYS}
    entry = scope.get(ENTRY)
    if entry is not None:
        head["path"], head["root_path"] = entry
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


def _is_stream(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(
        name.lower() == b"content-type" and value.startswith(b"text/event-stream")
        for name, value in headers
    )


def _moved(status: int, headers: list[tuple[bytes, bytes]]) -> Pumped | None:
    """Whether a response is the owner's refusal of a session that moved: ``MOVED``, or
    ``HANDED_OFF`` to the relaying node."""
    if status != 503:
        return None
    for name, value in headers:
        if name == MOVED_HEADER:
            return Pumped.HANDED_OFF if value == HANDED_OFF_VALUE else Pumped.MOVED
    return None


class Pumped(enum.Enum):
    """What streaming a relayed response to the client came to (:func:`pump`)."""

    #: The owner's response went to the client.
    SENT = "sent"
    #: The owner's response was its 404, sent to the client.
    NOT_FOUND = "not-found"
    #: Nothing was sent: the owner refused, as the session moved from it, and ran nothing.
    MOVED = "moved"
    #: Nothing was sent: the owner handed the session to this node, and ran nothing.
    HANDED_OFF = "handed-off"
    #: Nothing was sent: the response broke off before it began (the owner was lost).
    OWNER_LOST = "owner-lost"
    #: Nothing was sent: the client went away before the response began.
    CLIENT_LEFT = "client-left"


async def pump(forward: Forward, receive: Receive, send: Send) -> Pumped:
    """Streams ``forward``'s response to the client. When nothing was sent, the caller
    answers (see :class:`Pumped`)."""
    loop = asyncio.get_running_loop()
    started = client_gone = False
    result = Pumped.OWNER_LOST
    watcher: asyncio.Task[None] | None = None

    async def watch_client() -> None:
        nonlocal client_gone
        while (await receive())["type"] != "http.disconnect":
            pass
        client_gone = True
        forward.cancel()  # tells the owner, and ends the wait for the next frame below

    def start_watching() -> None:
        nonlocal watcher
        watcher = loop.create_task(watch_client())

    # Most responses are over before a client could go away: watch only slower ones, and
    # set the watch only once there is something to wait for (most relayed responses came
    # whole, with the acceptance).
    timer: asyncio.TimerHandle | None = None
    try:
        following: Part | None = None
        while True:
            part = following or forward.try_next()
            if part is None:
                if timer is None:
                    timer = loop.call_later(_WATCH_AFTER, start_watching)
                part = await forward.next()
            following = None
            if type(part) is Chunk:
                # An end right behind the last chunk completes the response with it.
                following = forward.try_next()
                last = type(following) is End
                await send({"type": "http.response.body", "body": part.data, "more_body": not last})
                if last:
                    break
            elif type(part) is Head or type(part) is Whole:
                status, headers = part.status, part.headers
                moved = _moved(status, headers)
                if moved is not None:
                    forward.cancel()
                    result = moved
                    break
                await send({"type": "http.response.start", "status": status, "headers": headers})
                started = True
                result = Pumped.NOT_FOUND if status == 404 else Pumped.SENT
                if type(part) is Whole:
                    await send({"type": "http.response.body", "body": part.body})
                    break
            else:  # End, or Cut
                if client_gone:
                    return Pumped.SENT if started else Pumped.CLIENT_LEFT
                if type(part) is Cut:
                    logger.warning("relayed response broke off: %s", part.reason)
                if started:
                    # A cut SSE stream is what a client resumes from (Last-Event-ID).
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                break
    finally:
        if timer is not None:
            timer.cancel()
        if watcher is not None:
            watcher.cancel()
    return result


async def serve(
    app: App, relay: Any, request: RelayedRequest, state: dict[str, Any] | None
) -> None:
    """Runs one relayed request on this node (``Relay.next_requests`` gives only those this
    node claimed), and streams the response back."""
    request_id, relayed_from, body = request.id, request.sender, request.body
    scope = decode_head(request.head, state, relayed_from)
    body_pending = True

    async def receive() -> Message:
        nonlocal body_pending
        if body_pending:
            body_pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        await relay.disconnected(request_id)
        return {"type": "http.disconnect"}

    response = _Response(relay, request_id, hold_stream_head=scope["method"] == "POST")
    ok = False
    try:
        await app(scope, receive, response.send)
        ok = True
    except Exception:
        logger.exception("relayed request from %s failed", relayed_from)
    finally:
        response.flush()
        relay.end(request_id, ok)


class _Response:
    """Sends a relayed request's response back in as few frames as keep it live.

    A response goes out whole, in one frame, when it is over soon enough: one that is not a
    stream whenever it ends, a POST's event stream if it ends within ``_HEAD_DELAY`` (most
    do: one result and the end). Otherwise the head and the body so far go out together
    once that time is up (the client must see an event as it comes, not wait on it), and
    every later chunk as the app sends it. A GET stream's head goes out at once: it may
    stay silent for minutes. A body past ``_HOLD_LIMIT`` is streamed, whatever its kind."""

    def __init__(self, relay: Any, request_id: bytes, *, hold_stream_head: bool) -> None:
        self.relay = relay
        self.id = request_id
        self.hold_stream_head = hold_stream_head
        self.held: tuple[int, list[tuple[bytes, bytes]]] | None = None
        self.body: bytearray | None = None  # the body so far, while the head is held
        self.timer: asyncio.TimerHandle | None = None

    def flush(self) -> None:
        """Sends the held head and the body held with it, if any."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.held is not None:
            self.relay.start(self.id, *self.held)
            self.held = None
        if self.body:
            # The response's first chunk: the window always has room for one, so there is
            # nothing to wait for (and no waiting in a timer's callback).
            self.relay.send(self.id, bytes(self.body))
        self.body = None

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            head = (
                message["status"],
                [(bytes(n), bytes(v)) for n, v in message.get("headers", ())],
            )
            self.held = head
            if not _is_stream(head[1]):
                self.body = bytearray()
            elif self.hold_stream_head:
                self.body = bytearray()
                self.timer = asyncio.get_running_loop().call_later(_HEAD_DELAY, self.flush)
            else:
                self.flush()
            return
        if message["type"] != "http.response.body":
            return
        chunk = message.get("body", b"")
        more = message.get("more_body", False)
        if self.body is not None:
            self.body += chunk
            if not more and self.held is not None:
                if self.timer is not None:
                    self.timer.cancel()
                    self.timer = None
                self.relay.respond(self.id, self.held[0], self.held[1], bytes(self.body))
                self.held = self.body = None
                return
            if len(self.body) < _HOLD_LIMIT:
                return
            self.flush()  # a big body: stream it after all
        elif chunk:
            waiting = self.relay.send(self.id, bytes(chunk))
            if waiting is not None:
                await waiting  # the window is full: wait for the client to catch up
        if not more:
            self.relay.end(self.id, True)
