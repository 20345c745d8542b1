"""Two MCP servers mounted under one Starlette app, as the SDK documents it: each server's
app under its own path, both session managers run from the parent app's lifespan, and a
plain route beside them. ``SessionMiddleware`` wraps the parent once.

Configured by environment: ``MCP_DB_REDIS_URL``, ``MCP_DB_PREFIX``;
``MCP_DB_TWIN_IDS``: each new session ID is handed out twice in a row in this process, so
the first sessions of the two servers opened through one node have equal IDs;
``MCP_DB_WRAP=each``: wrap each server's app in a ``SessionMiddleware`` of its own (with a
store prefix of its own) inside the parent instead. The parent's lifespan then never
reaches them (a mount passes no lifespan on), so each starts at its first request.
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

URL = os.environ.get("MCP_DB_REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("MCP_DB_PREFIX", "mcp")
EACH = os.environ.get("MCP_DB_WRAP") == "each"
store = RedisEventStore(URL, prefix=PREFIX)
#: Each server's store: the one store, or with ``each`` one per server, its own prefix.
stores = {name: RedisEventStore(URL, prefix=f"{PREFIX}-{name}") if EACH else store
          for name in ("alpha", "beta")}  # fmt: skip


def build(name: str) -> Any:
    own = stores[name]
    server = Server(name) if SDK_MAJOR >= 2 else Server(name, event_store=own)

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
if SDK_MAJOR >= 2:
    alpha_app = alpha.streamable_http_app(event_store=stores["alpha"])
    beta_app = beta.streamable_http_app(event_store=stores["beta"])
else:
    alpha_app, beta_app = alpha.streamable_http_app(), beta.streamable_http_app()


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


if EACH:
    alpha_app = SessionMiddleware(alpha_app, store=stores["alpha"], lease_seconds=2.0)
    beta_app = SessionMiddleware(beta_app, store=stores["beta"], lease_seconds=2.0)

parent = Starlette(
    routes=[
        Route("/health", health),
        Route("/debug/pid", pid),
        Mount("/alpha", alpha_app),
        Mount("/beta", beta_app),
    ],
    lifespan=lifespan,
)
app = parent if EACH else SessionMiddleware(parent, store=store, lease_seconds=2.0)
