"""An MCP server built the ordinary way with the installed SDK, plus mcp-db's store.

Run by the tests under uvicorn in a subprocess. Configured by environment:

- ``MCP_DB_STORE``: ``redis`` (default), ``memory``, or ``none`` (the bare SDK: no event
  store, no mcp-db at all; the cluster benchmark's baseline)
- ``MCP_DB_REDIS_URL``, ``MCP_DB_PREFIX`` and ``MCP_DB_TIMEOUT_SECONDS`` for the Redis store
- ``MCP_RETRY_MS``: the SSE ``retry`` the server sends (100 ms unless given)
- ``MCP_DB_MIDDLEWARE``: wrap the app in ``SessionMiddleware``; then
  ``MCP_DB_SESSION_TTL`` and ``MCP_DB_LEASE_SECONDS`` set its options, and the node ID is
  ``node-<pid>``, or with ``MCP_DB_DEFAULT_NODE_ID`` the middleware's default (what
  ``gunicorn --preload`` needs: this module then runs in the master, before the fork)
- ``MCP_DB_SUBSCRIPTIONS`` (mcp 2.x): ``RedisSubscriptionBus`` as the server's bus
- ``MCP_DB_REQUEST_STATE_KEY`` (mcp 2.x): the request-state key every node shares (hex);
  a fixed test key unless given
- ``MCP_DB_HAND_OFF=0``: ``SessionMiddleware(hand_off=False)``: sessions stay with their
  owner until it is gone
- ``MCP_DB_JSON_RESPONSE`` (mcp 2.x): answers come as JSON bodies, not event streams
- ``MCP_DB_BRIDGE``: the same bus given to ``SessionMiddleware(bus=...)`` too, so its
  events reach handshake-era sessions (on mcp 1.x, the ``publish`` tool publishes on it)
"""

# No `from __future__ import annotations`: FastMCP 1.12 inspects real annotations.
import inspect
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import anyio
from mcp.types import SamplingMessage, TextContent
from pydantic import BaseModel

from mcp_db import MemoryEventStore, RedisEventStore
from mcp_db._sdk import SDK_MAJOR, SDK_VERSION

STORE = os.environ.get("MCP_DB_STORE", "redis")
if STORE == "none":
    store: Any = None
elif STORE == "memory":
    store = MemoryEventStore()
else:
    store = RedisEventStore(
        os.environ.get("MCP_DB_REDIS_URL", "redis://127.0.0.1:6379/0"),
        prefix=os.environ.get("MCP_DB_PREFIX", "mcp"),
        timeout_seconds=float(os.environ.get("MCP_DB_TIMEOUT_SECONDS", "5")),
    )

# Clients reconnect after this many milliseconds once the server cuts a stream.
RETRY_MS = int(os.environ.get("MCP_RETRY_MS", "100"))
# The SDK's idle timeout (1.2x and 2.x), to see reaped sessions come back.
IDLE_TIMEOUT = float(os.environ["MCP_IDLE_TIMEOUT"]) if "MCP_IDLE_TIMEOUT" in os.environ else None

auth_options: dict[str, Any] = {}
if os.environ.get("MCP_TEST_AUTH"):
    # The SDK's own bearer-token authentication, with a verifier that accepts
    # "user-<name>" as the principal <name>: what sessions are bound to.
    from mcp.server.auth.provider import AccessToken
    from mcp.server.auth.settings import AuthSettings

    class NamedTokens:
        async def verify_token(self, token: str) -> AccessToken | None:
            if not token.startswith("user-"):
                return None
            return AccessToken(token=token, client_id=token[5:], scopes=[])

    auth_options = {
        "token_verifier": NamedTokens(),
        "auth": AuthSettings(
            issuer_url="https://auth.example.com",  # type: ignore[arg-type]
            resource_server_url="http://127.0.0.1",  # type: ignore[arg-type]
            required_scopes=[],
        ),
    }

BRIDGE = bool(os.environ.get("MCP_DB_BRIDGE"))
bus: Any = None
if os.environ.get("MCP_DB_SUBSCRIPTIONS") or BRIDGE:
    from mcp_db import RedisSubscriptionBus

    bus = RedisSubscriptionBus(store)

if SDK_MAJOR >= 2:
    from mcp.server.mcpserver import Context, MCPServer
    from mcp.server.request_state import RequestStateSecurity

    # Every node shares its request-state keys, as a deployment must (docs/deploy/2026-clients.md).
    key = os.environ.get("MCP_DB_REQUEST_STATE_KEY", "6d63702d6462" + "20" * 26)
    server_options: dict[str, Any] = {
        "request_state_security": RequestStateSecurity(keys=[bytes.fromhex(key)])
    }
    if bus is not None:
        server_options["subscriptions"] = bus
    server: Any = MCPServer("mcp-db-test", **server_options, **auth_options)
else:
    from mcp.server.fastmcp import Context, FastMCP

    server_options = {"event_store": store}
    if "retry_interval" in inspect.signature(FastMCP).parameters:  # since SEP-1699 (1.2x)
        server_options["retry_interval"] = RETRY_MS
    if IDLE_TIMEOUT is not None:
        server_options["session_idle_timeout"] = IDLE_TIMEOUT
    server = FastMCP("mcp-db-test", **server_options, **auth_options)


async def _cut_stream(ctx: Any) -> None:
    """Ends the current POST's SSE stream mid-call, as a dropped connection would."""
    if hasattr(ctx, "close_sse_stream"):
        await ctx.close_sse_stream()
        return
    # mcp 1.12.4 has no API for it: close the transport's writer for this request.
    session_id = ctx.request_context.request.headers["mcp-session-id"]
    transport = server.session_manager._server_instances[session_id]
    transport._request_streams[str(ctx.request_id)][0].close()


async def _notify(ctx: Any, i: int, n: int) -> None:
    if SDK_VERSION.startswith("1.12."):
        # 1.12's report_progress does not tie progress to the request, so it would go to
        # the GET stream; a log message is tied to the request's POST stream.
        await ctx.info(f"step {i}")
    else:
        await ctx.report_progress(i, n, f"step {i}")


@server.tool()
async def steps(n: int, cut_at: int = -1, delay: float = 0.01, ctx: Context = None) -> str:  # type: ignore[assignment]
    """Sends n notifications, cutting the stream after notification ``cut_at``."""
    for i in range(n):
        await _notify(ctx, i, n)
        if i == cut_at:
            await _cut_stream(ctx)
        await anyio.sleep(delay)
    return f"done {n}"


@server.tool()
def echo(text: str) -> str:
    """Returns its argument."""
    return text


@server.tool()
async def whoami(ctx: Context = None) -> str:  # type: ignore[assignment]
    """The client name this node believes the session has (from its initialize)."""
    params = ctx.session.client_params
    info = getattr(params, "client_info", None) or params.clientInfo
    return f"{info.name} on {os.getpid()}"


class Verdict(BaseModel):
    """What ``ask`` elicits from the user about the sampled answer."""

    ok: bool
    note: str


@server.tool()
async def ask(question: str, ctx: Context = None) -> str:  # type: ignore[assignment]
    """Asks the client's model (sampling), then the user (elicitation), on this call's
    stream, and combines both answers."""
    sampled = await ctx.session.create_message(
        messages=[SamplingMessage(role="user", content=TextContent(type="text", text=question))],
        max_tokens=32,
        related_request_id=ctx.request_id,
    )
    answer = sampled.content.text
    verdict = await ctx.elicit(f"Is {answer!r} right?", schema=Verdict)
    if verdict.action != "accept":
        return f"{answer} | {verdict.action}"
    return f"{answer} | ok={verdict.data.ok} note={verdict.data.note}"


@server.tool()
async def announce(tag: str, ctx: Context = None) -> str:  # type: ignore[assignment]
    """Sends a notification tied to no request, so the SDK routes it to the session's
    standalone GET stream: ``notifications/resources/updated`` for ``note://announce/<tag>``."""
    await ctx.session.send_resource_updated(f"note://announce/{tag}")
    return f"announced {tag}"


# Tags of the ``slow`` calls that were cancelled, in this process. With the relay, every
# call of a session runs on its owner, so ``cancelled`` reads the list the call wrote.
CANCELLED: list[str] = []


@server.tool()
async def slow(seconds: float, tag: str, ctx: Context = None) -> str:  # type: ignore[assignment]
    """Notifies once that it started (as ``steps`` does), then sleeps; a cancellation is
    recorded under ``tag``."""
    await _notify(ctx, 0, 1)
    try:
        await anyio.sleep(seconds)
    except anyio.get_cancelled_exc_class():
        CANCELLED.append(tag)
        raise
    return f"slept {seconds}"


@server.tool()
def cancelled() -> str:
    """The tags of the cancelled ``slow`` calls, as a JSON list."""
    return json.dumps(CANCELLED)


@server.tool()
async def clock(n: int, delay: float = 0.0, ctx: Context = None) -> str:  # type: ignore[assignment]
    """Sends n progress notifications whose message is the wall-clock time they were sent
    (for the relay benchmark's per-event latency)."""
    import time

    for i in range(n):
        await ctx.report_progress(i, n, repr(time.time()))
        if delay:
            await anyio.sleep(delay)
    return f"ticked {n}"


@server.resource("note://greeting")
def greeting() -> str:
    """A fixed resource."""
    return "hello from a resource"


@server.prompt()
def review(code: str) -> str:
    """A prompt with one argument."""
    return f"Please review: {code}"


@server.tool()
async def publish(kind: str, uri: str = "", ctx: Context = None) -> str:  # type: ignore[assignment]
    """Publishes a change: ``tools``, ``prompts``, ``resources`` (list changed) or
    ``resource`` (``uri`` updated). On mcp 2.x through the server's bus, as a handler
    would (``ctx.notify_*``), for listen streams and, with ``MCP_DB_BRIDGE``, handshake-era
    sessions; on mcp 1.x through the bus itself (``bus.notify_*``)."""
    target = ctx if SDK_MAJOR >= 2 else bus
    if kind == "resource":
        await target.notify_resource_updated(uri)
    else:
        await getattr(target, f"notify_{kind}_changed")()
    return f"pid {os.getpid()}"


if SDK_MAJOR >= 2:
    app_options: dict[str, Any] = {"event_store": store, "retry_interval": RETRY_MS}
    if IDLE_TIMEOUT is not None:
        app_options["session_idle_timeout"] = IDLE_TIMEOUT
    if os.environ.get("MCP_DB_JSON_RESPONSE"):  # answers as JSON bodies, not event streams
        app_options["json_response"] = True
    app = server.streamable_http_app(**app_options)
else:
    app = server.streamable_http_app()
if os.environ.get("MCP_DB_MIDDLEWARE"):
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    from mcp_db import SessionMiddleware

    async def sessions(request: Request) -> JSONResponse:
        """Test-only: how many transports this node holds."""
        return JSONResponse({"sessions": len(server.session_manager._server_instances)})

    async def pid(request: Request) -> JSONResponse:
        """Test-only: which process answered (tells ``--workers`` processes apart)."""
        return JSONResponse({"pid": os.getpid()})

    async def hold(request: Request) -> StreamingResponse:
        """Test-only: a plain response that names this process at once and ends
        ``seconds`` later, so that a node stopped meanwhile drains it that long."""
        seconds = float(request.query_params.get("seconds", "5"))

        async def body() -> AsyncIterator[bytes]:
            yield f"{os.getpid()}\n".encode()
            await anyio.sleep(seconds)
            yield b"done\n"

        return StreamingResponse(body(), media_type="text/plain")

    async def stats(request: Request) -> JSONResponse:
        """Test-only: this node's counters (the middleware's, the store's, the bus's)."""
        counts = {"middleware": app.stats(), "store": store.stats()}
        return JSONResponse({**counts, "bus": bus.stats() if bus is not None else None})

    app.router.routes.append(Route("/debug/stats", stats))
    app.router.routes.append(Route("/debug/sessions", sessions))
    app.router.routes.append(Route("/debug/pid", pid))
    app.router.routes.append(Route("/debug/hold", hold))
    ttl = os.environ.get("MCP_DB_SESSION_TTL")
    middleware_options: dict[str, Any] = {}
    if os.environ.get("MCP_DB_LEASE_SECONDS"):
        middleware_options["lease_seconds"] = float(os.environ["MCP_DB_LEASE_SECONDS"])
    if os.environ.get("MCP_DB_HAND_OFF") == "0":
        middleware_options["hand_off"] = False
    app = SessionMiddleware(
        app,
        store=store,
        session_manager=server.session_manager,
        node_id=None if os.environ.get("MCP_DB_DEFAULT_NODE_ID") else f"node-{os.getpid()}",
        session_ttl_seconds=float(ttl) if ttl else None,
        bus=bus if BRIDGE else None,
        **middleware_options,
    )
elif store is not None:
    store.attach(server.session_manager)
