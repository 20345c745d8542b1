"""ASGI plumbing shared by the middleware and the relay: the types, reading headers and
bodies, and the JSON-RPC error responses mcp-db answers with itself (each one's bytes built
once, at import)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Scope key naming the path a request took, for the request-duration histogram.
PATH = "mcp_db.path"
#: Marks a 503 by which a node refuses a request it was relayed but ran nothing of, because
#: the session moved: the relaying node reads the record again and relays to the new owner.
MOVED_HEADER = b"mcp-db-moved"


def header(scope: Scope, name: bytes) -> str | None:
    """A request header (``name`` in lower case, as ASGI servers give them)."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def mcp_headers(scope: Scope) -> tuple[str | None, str | None]:
    """The ``MCP-Protocol-Version`` and ``Mcp-Session-Id`` headers (the first of each), read
    in one pass: every request to the MCP endpoint needs both."""
    version: str | None = None
    session_id: str | None = None
    for key, value in scope.get("headers", ()):
        if key == b"mcp-protocol-version":
            if version is None:
                version = value.decode("latin-1")
        elif key == b"mcp-session-id" and session_id is None:
            session_id = value.decode("latin-1")
    return version, session_id


def response_header(message: Message, name: bytes) -> str | None:
    """A header of an ``http.response.start`` message, whatever its case."""
    for key, value in message.get("headers", ()):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


async def read_body(receive: Receive, limit: int) -> tuple[bytes, bool]:
    """The request body, up to ``limit`` bytes (the SDK's ``max_request_body_size``).
    ``complete`` is False past the limit, or if the client left: the rest is left unread."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), False
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), True
        if size > limit:
            return b"".join(chunks), False


def too_large(body: bytes, complete: bool) -> bool:
    """Whether a body read by :func:`read_body` went past the limit (and was not just cut
    short by a client that left before sending any)."""
    return not complete and bool(body)


class Replay:
    """A ``receive`` that first hands back the body already read, then the rest."""

    __slots__ = ("body", "more", "receive")

    def __init__(self, body: bytes, receive: Receive, *, more: bool) -> None:
        self.body: bytes | None = body
        self.more = more
        self.receive = receive

    async def __call__(self) -> Message:
        if self.body is not None:
            body, self.body = self.body, None
            return {"type": "http.request", "body": body, "more_body": self.more}
        return await self.receive()


class Response:
    """A whole response mcp-db answers with itself; its bytes are built once. Every send
    gets fresh message dicts: the app's own middleware may add headers to them."""

    __slots__ = ("body", "headers", "path", "status")

    def __init__(
        self,
        status: int,
        body: bytes = b"",
        *,
        headers: tuple[tuple[bytes, bytes], ...] | None = None,
        retry_after: bool = False,
        moved: bytes | None = None,
        path: str | None = None,
    ) -> None:
        if headers is None:
            headers = ((b"content-type", b"application/json"),) if body else ()
        if retry_after:
            headers += ((b"retry-after", b"1"),)
        if moved is not None:
            headers += ((MOVED_HEADER, moved),)
        self.status = status
        self.body = body
        self.headers = headers
        #: What the request-duration histogram calls the path of a request answered so.
        self.path = "unavailable" if path is None and status == 503 else path

    async def send(self, scope: Scope, send: Send) -> None:
        if self.path is not None:
            scope[PATH] = self.path
        start = {
            "type": "http.response.start",
            "status": self.status,
            "headers": list(self.headers),
        }
        await send(start)
        await send({"type": "http.response.body", "body": self.body})


def _error(code: int, message: str) -> bytes:
    return b'{"jsonrpc":"2.0","id":null,"error":{"code":%d,"message":"%s"}}' % (
        code,
        message.encode(),
    )


NOT_FOUND = Response(404, _error(-32600, "Session not found"), path="not_found")
TOO_LARGE = Response(413, _error(-32600, "Request body too large"))
#: Redis is unreachable: the client retries.
UNAVAILABLE = Response(503, _error(-32603, "Session store unavailable"), retry_after=True)
#: Redis is at ``maxmemory`` with ``noeviction``: no new session can be recorded.
FULL = Response(
    503,
    _error(-32603, "Session store full: Redis is out of memory (maxmemory); try again later"),
    retry_after=True,
)
#: The session moved while this node held the request; nothing of it ran.
MOVED = Response(503, _error(-32603, "Session moved; retry"), retry_after=True, moved=b"1")
#: Between nodes only: the owner handed the session to the node that relayed the request,
#: which serves it now; nothing of it ran.
HANDED_OFF_VALUE = b"handed-off"
HANDED_OFF = Response(
    503,
    _error(-32603, "Session moved; retry"),
    retry_after=True,
    moved=HANDED_OFF_VALUE,
    path="handed_off",
)
OWNER_BUSY = Response(503, _error(-32603, "Session owner not answering"), retry_after=True)
OWNER_LOST = Response(503, _error(-32603, "Session owner went away"), retry_after=True)
#: The manager is at ``max_sessions`` (the SDK answers 503 with no ``Retry-After`` too).
TOO_MANY = Response(503, _error(-32603, "Too many open sessions"))
#: DELETE of a session whose transport this node does not hold.
CLOSED = Response(200)
#: What the owner's SDK answers a stream resumption whose replay cannot read Redis: an
#: event stream that ends at once, with nothing in it.
EMPTY_STREAM = Response(
    200,
    headers=(
        (b"content-type", b"text/event-stream"),
        (b"cache-control", b"no-cache, no-transform"),
    ),
    path="unavailable",
)


def store_unavailable(scope: Scope) -> Response:
    """The answer when Redis is unreachable and this node cannot serve the request alone:
    503 with ``Retry-After``, except for a stream resumption (GET with ``Last-Event-ID``).
    That one gets :data:`EMPTY_STREAM`. SDK clients give a resumption two failed tries (a
    503 is one) but reconnect after every stream that ends, so this keeps them coming back,
    every server ``retry``, until Redis returns and the replay runs, wherever the request
    lands. Nothing is replayed or changed, and the session is not vouched for."""
    if scope["method"] != "GET" or header(scope, b"last-event-id") is None:
        return UNAVAILABLE
    return EMPTY_STREAM


def invalid_initialize(request_id: Any) -> Response:
    """400 for an ``initialize`` whose params the SDK would refuse after creating a session."""
    if not isinstance(request_id, (str, int)) or isinstance(request_id, bool):
        request_id = None
    error = {
        "code": -32602,
        "message": "Invalid params: initialize needs protocolVersion, capabilities and "
        "clientInfo; no session was created",
    }
    body = json.dumps({"jsonrpc": "2.0", "id": request_id, "error": error}).encode()
    return Response(400, body)
