"""An MCP server built the ordinary way with the installed SDK, plus mcp-db's store.

Run by the tests under uvicorn in a subprocess. Configured by environment:

- ``MCP_DB_STORE``: ``redis`` (default) or ``memory``
- ``MCP_DB_REDIS_URL`` and ``MCP_DB_PREFIX`` for the Redis store
"""

# No `from __future__ import annotations`: FastMCP 1.12 inspects real annotations.
import inspect
import os
from typing import Any

import anyio

from mcp_db import MemoryEventStore, RedisEventStore
from mcp_db._sdk import SDK_MAJOR, SDK_VERSION

if os.environ.get("MCP_DB_STORE", "redis") == "memory":
    store: Any = MemoryEventStore()
else:
    store = RedisEventStore(
        os.environ.get("MCP_DB_REDIS_URL", "redis://127.0.0.1:6379/0"),
        prefix=os.environ.get("MCP_DB_PREFIX", "mcp"),
    )

# Clients reconnect after this many milliseconds once the server cuts a stream.
RETRY_MS = 100
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

if SDK_MAJOR >= 2:
    from mcp.server.mcpserver import Context, MCPServer

    server: Any = MCPServer("mcp-db-test", **auth_options)
else:
    from mcp.server.fastmcp import Context, FastMCP

    server_options: dict[str, Any] = {"event_store": store}
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


@server.resource("note://greeting")
def greeting() -> str:
    """A fixed resource."""
    return "hello from a resource"


@server.prompt()
def review(code: str) -> str:
    """A prompt with one argument."""
    return f"Please review: {code}"


if SDK_MAJOR >= 2:
    app_options: dict[str, Any] = {"event_store": store, "retry_interval": RETRY_MS}
    if IDLE_TIMEOUT is not None:
        app_options["session_idle_timeout"] = IDLE_TIMEOUT
    app = server.streamable_http_app(**app_options)
else:
    app = server.streamable_http_app()
if os.environ.get("MCP_DB_MIDDLEWARE"):
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from mcp_db import SessionMiddleware

    async def sessions(request: Request) -> JSONResponse:
        """Test-only: how many transports this node holds."""
        return JSONResponse({"sessions": len(server.session_manager._server_instances)})

    app.router.routes.append(Route("/debug/sessions", sessions))
    ttl = os.environ.get("MCP_DB_SESSION_TTL")
    app = SessionMiddleware(
        app,
        store=store,
        session_manager=server.session_manager,
        node_id=f"node-{os.getpid()}",
        session_ttl_seconds=float(ttl) if ttl else None,
    )
else:
    store.attach(server.session_manager)
