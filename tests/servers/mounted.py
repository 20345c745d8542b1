"""Two MCP servers mounted under one Starlette app, as the SDK documents it: each server's
app under its own path, both session managers run from the parent app's lifespan, and a
plain route beside them. ``SessionMiddleware`` wraps the parent once.

Configured by environment: ``MCP_DB_REDIS_URL``, ``MCP_DB_PREFIX``, and
``MCP_DB_TWIN_IDS``: each new session ID is handed out twice in a row in this process, so
the first sessions of the two servers opened through one node have equal IDs.
"""

# No `from __future__ import annotations`: FastMCP 1.12 inspects real annotations.
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from mcp_db import RedisEventStore, SessionMiddleware
from mcp_db._sdk import SDK_MAJOR

if os.environ.get("MCP_DB_TWIN_IDS"):
    import mcp.server.streamable_http_manager as manager_module

    class _Twins:
        """Hands every ID out twice in a row."""

        def __init__(self) -> None:
            self.held: Any = None

        def __call__(self) -> Any:
            if self.held is None:
                self.held = uuid.uuid4()
                return self.held
            held, self.held = self.held, None
            return held

    manager_module.uuid4 = _Twins()  # type: ignore[attr-defined]

if SDK_MAJOR >= 2:
    from mcp.server.mcpserver import MCPServer as Server
else:
    from mcp.server.fastmcp import FastMCP as Server

store = RedisEventStore(
    os.environ.get("MCP_DB_REDIS_URL", "redis://127.0.0.1:6379/0"),
    prefix=os.environ.get("MCP_DB_PREFIX", "mcp"),
)


def build(name: str) -> Any:
    server = Server(name) if SDK_MAJOR >= 2 else Server(name, event_store=store)

    @server.tool()
    def whoami() -> str:
        """This server's name and the process that ran the call."""
        return f"{name} on {os.getpid()}"

    @server.tool()
    def echo(text: str) -> str:
        """Returns its argument."""
        return text

    return server


alpha, beta = build("alpha"), build("beta")
options: dict[str, Any] = {"event_store": store} if SDK_MAJOR >= 2 else {}
alpha_app = alpha.streamable_http_app(**options)
beta_app = beta.streamable_http_app(**options)


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(alpha.session_manager.run())
        await stack.enter_async_context(beta.session_manager.run())
        yield


async def health(request: Request) -> PlainTextResponse:
    """A route of the parent app: mcp-db leaves it alone."""
    return PlainTextResponse(f"ok {os.getpid()}")


async def pid(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(os.getpid()))


parent = Starlette(
    routes=[
        Route("/health", health),
        Route("/debug/pid", pid),
        Mount("/alpha", alpha_app),
        Mount("/beta", beta_app),
    ],
    lifespan=lifespan,
)
app = SessionMiddleware(parent, store=store, lease_seconds=2.0)
